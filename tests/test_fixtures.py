import torch


def test_tiny_whisper_generates(tiny_whisper, whisper_features):
    out = tiny_whisper.generate(whisper_features, max_new_tokens=5)
    assert out.shape[0] == 2 and out.shape[1] >= 2


def test_tiny_ctc_forward(tiny_ctc, ctc_audio):
    with torch.no_grad():
        logits = tiny_ctc(ctc_audio).logits
    assert logits.shape[0] == 2 and logits.shape[-1] == 32
