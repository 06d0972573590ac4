"""asrcompress: DVC-reproducible compression of speech recognition models."""
