"""The pretraining's auxiliary encoder CTC loss (train/ctc_aux.py)."""

import numpy as np
import pytest
import torch
from conftest import OFFLINE_DIMS, make_offline_rows

from asrcompress.models.whisper import (
    build_model,
    label_ids,
)
from asrcompress.train.collate import WhisperCollator
from asrcompress.train.ctc_aux import EncoderCTCHead, ctc_aux_loss
from asrcompress.train.loop import TrainConfig, train

DIMS = OFFLINE_DIMS


@pytest.fixture
def processor(offline_processor):
    return offline_processor


def _head(processor, d_model=32):
    tok = processor.tokenizer
    return EncoderCTCHead(d_model, len(tok), set(tok.all_special_ids))


def test_targets_are_the_text_tokens_only(processor):
    tok = processor.tokenizer
    texts = ["seven red cats", "room 125 in the morning"]
    rows = [label_ids(tok, t, "en") for t in texts]
    labels = torch.full((2, max(map(len, rows)) + 3), -100)
    for i, r in enumerate(rows):
        labels[i, :len(r)] = torch.tensor(r)
    flat, lengths = _head(processor).targets(labels)
    text_ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
    assert lengths.tolist() == [len(x) for x in text_ids]
    assert flat.tolist() == text_ids[0] + text_ids[1]
    assert not set(flat.tolist()) & set(tok.all_special_ids)
    assert tok.decode(flat[:lengths[0]].tolist()).strip() == texts[0]


def test_loss_is_finite_and_trains_the_head_and_the_encoder(processor):
    torch.manual_seed(0)
    head = _head(processor)
    hidden = torch.randn(2, 50, 32, requires_grad=True)
    labels = torch.tensor([label_ids(processor.tokenizer, "seven red cats", "en")] * 2)
    loss = head.loss(hidden, labels)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert hidden.grad.abs().sum() > 0 and head.proj.weight.grad.abs().sum() > 0
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        current = head.loss(hidden.detach(), labels)
        current.backward()
        opt.step()
    assert head.loss(hidden.detach(), labels).item() < 0.5 * loss.item()
    with pytest.raises(ValueError, match="pretrain_ctc.weight"):
        ctc_aux_loss(head, 0.0)


def test_joint_training_logs_the_ctc_term_and_saves_a_plain_whisper(processor, tmp_path):
    rows = make_offline_rows()
    torch.manual_seed(0)
    model = build_model(DIMS, processor.tokenizer, chunk_length_s=1)
    head = _head(processor)
    cfg = TrainConfig(max_steps=12, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=100, seed=7,
                      num_threads=1)
    before = head.proj.weight.detach().clone()
    train(model, rows, WhisperCollator(processor, "en"), cfg, tmp_path / "ck", tmp_path / "loss.csv",
          extra_loss=ctc_aux_loss(head, 0.3), extra_params=list(head.parameters()))
    log = np.loadtxt(tmp_path / "loss.csv", delimiter=",", skiprows=1)
    assert (log[:, 2] > 0).all() and log[-3:, 2].mean() < log[:3, 2].mean()  # the CTC term is logged and falls
    assert not torch.equal(before, head.proj.weight)  # the head is optimised with the model
    model.save_pretrained(tmp_path / "m")
    keys = set(type(model).from_pretrained(tmp_path / "m").state_dict())
    assert keys == set(model.state_dict()) and not any("proj.weight" == k for k in keys)


def test_frame_stride_averages_frames(processor):
    torch.manual_seed(0)
    tok = processor.tokenizer
    head = EncoderCTCHead(32, len(tok), set(tok.all_special_ids), frame_stride=2)
    hidden = torch.randn(1, 51, 32)
    labels = torch.tensor([label_ids(tok, "seven red cats", "en")])
    pooled = hidden[:, :50].reshape(1, 25, 2, 32).mean(2)
    # the same as a stride-1 head with the same weights on the hand-averaged frames (+ the odd last one)
    plain = EncoderCTCHead(32, len(tok), set(tok.all_special_ids))
    plain.load_state_dict(head.state_dict())
    expected = plain.loss(torch.cat([pooled, hidden[:, 50:]], 1), labels)
    assert torch.allclose(head.loss(hidden, labels), expected, atol=1e-5)
    with pytest.raises(ValueError, match="frame_stride"):
        EncoderCTCHead(32, len(tok), set(), frame_stride=0)
