"""se.bin.enhance --batch-size / --length-quantum: outputs independent of the batch size for
every network, files of different lengths and segmented long files, the progress line."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from se.batching import Progress, _batches, _pieces, padded_length
from se.bin import enhance
from se.models import build_network, network_kwargs

# tiny variants of each network (seconds on CPU); FRCRN also causal (exactly padding-invariant)
TINY = {
    "FRCRN_SE_16K": ("FRCRN_SE_16K", {"channels": 4, "fsmn_hidden": 4, "se_reduction": 2, "lorder": 3}),
    "FRCRN_causal": ("FRCRN_SE_16K", {"channels": 4, "fsmn_hidden": 4, "se_reduction": 2, "lorder": 3,
                                      "causal": True}),
    "MossFormerGAN_SE_16K": ("MossFormerGAN_SE_16K", {"num_channel": 8, "num_blocks": 1, "dropout": 0.0}),
    "MossFormer2_SE_48K": ("MossFormer2_SE_48K", {"num_blocks": 1, "width": 32, "query_key_dim": 16,
                                                  "fsmn_inner": 16, "dropout": 0.0}),
}
# seconds: two pairs of equal lengths, odd lengths, one file longer than the 1 s segment
SECONDS = [0.30, 0.47, 0.30, 0.62, 0.47, 0.55, 1.40]
SEGMENT = ["--segment-length", "1.0", "--segment-overlap", "0.25"]


def tiny_checkpoint(tag, path):
    network, kwargs = TINY[tag]
    torch.manual_seed(0)
    conf = {"network_kwargs": kwargs}
    model = build_network(network, conf)
    torch.save({"model": model.state_dict(), "network": network, "sampling_rate": model.sampling_rate,
                "network_kwargs": network_kwargs(network, conf)}, path)
    return path, model.sampling_rate


def write_inputs(root, rate):
    rng = np.random.default_rng(7)
    root.mkdir(parents=True)
    t = np.arange(int(max(SECONDS) * rate)) / rate
    for i, s in enumerate(SECONDS):
        n = int(s * rate)
        x = 0.2 * np.sin(2 * np.pi * (150 + 20 * i) * t[:n]) + 0.05 * rng.standard_normal(n)
        sf.write(root / f"u{i}.wav", x, rate, subtype="FLOAT")
    return root


def run(ckpt, inputs, out, *extra):
    assert enhance.main(["--checkpoint", str(ckpt), "--input", str(inputs), "--output-dir", str(out),
                         "--output-subtype", "FLOAT", *SEGMENT, *extra]) == 0
    return {p.name: sf.read(p)[0] for p in sorted(out.glob("*.wav"))}


def max_diff(a, b):
    assert a.keys() == b.keys() and len(a) == len(SECONDS)
    return max(np.abs(a[k] - b[k]).max() for k in a)


@pytest.mark.parametrize("tag", list(TINY))
def test_batch_8_equals_batch_1(tag, tmp_path):
    ckpt, rate = tiny_checkpoint(tag, tmp_path / "tiny.pt")
    inputs = write_inputs(tmp_path / "in", rate)
    one = run(ckpt, inputs, tmp_path / "b1")  # the file-by-file path
    eight = run(ckpt, inputs, tmp_path / "b8", "--batch-size", "8")
    for name, y in one.items():
        assert len(y) == len(sf.read(inputs / name)[0])
    assert min(np.sqrt(np.mean(y**2)) for y in one.values()) > 1e-3  # real outputs, not silence
    # unpadded: equal-length pieces (and causal: any lengths) batched, same numbers as file by file
    assert max_diff(one, eight) <= 1e-5
    if tag == "FRCRN_causal":
        return
    q1 = run(ckpt, inputs, tmp_path / "q1", "--length-quantum", "0.25")
    q8 = run(ckpt, inputs, tmp_path / "q8", "--length-quantum", "0.25", "--batch-size", "8")
    assert max_diff(q1, q8) <= 1e-5
    # the padding is real (these networks are not padding-invariant), the same at every batch size
    assert max_diff(one, q1) > 1e-4


def test_pieces_and_batches():
    assert [padded_length(n, 4000) for n in (1, 4000, 4001)] == [4000, 4000, 8000]
    assert padded_length(4001, 0) == 4001
    # a long file: segments of exactly `segment`, the last one ending at the file's end
    long = _pieces(0, 25000, 16000, 4000, 0)
    assert [(p.start, p.length) for p in long] == [(0, 16000), (9000, 16000)]
    short = [_pieces(i, n, 16000, 4000, 4000)[0] for i, n in enumerate((3000, 7000, 3900, 6000), 1)]
    batches = _batches(long + short, 8, causal=False)
    assert [[(p.file, p.padded) for p in b] for b in batches] == [[(1, 4000), (3, 4000)], [(2, 8000), (4, 8000)],
                                                                 [(0, 16000), (0, 16000)]]
    causal = _batches(short, 3, causal=True)  # length order, any lengths
    assert [[p.length for p in b] for b in causal] == [[3000, 3900, 6000], [7000]]


def test_progress_line_with_rate_and_eta(tmp_path, caplog):
    ckpt, rate = tiny_checkpoint("FRCRN_SE_16K", tmp_path / "tiny.pt")
    inputs = write_inputs(tmp_path / "in", rate)
    with caplog.at_level(logging.INFO):
        run(ckpt, inputs, tmp_path / "out", "--batch-size", "4", "--length-quantum", "0.5")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("enhance: ")]
    assert lines[-1].startswith(f"enhance: {len(SECONDS)}/{len(SECONDS)} files (100%), ")
    assert "files/s" in lines[-1] and lines[-1].endswith("ETA 0 s")


def test_progress_eta_arithmetic(caplog):
    p = Progress(10, interval=0.0, logger=logging.getLogger("t"))
    p.t0 -= 4.0  # 4 s ago
    with caplog.at_level(logging.INFO, logger="t"):
        p.update(2)
    msg = caplog.records[-1].getMessage()
    assert msg.startswith("enhance: 2/10 files (20%), 0.50 files/s, elapsed 4 s, ETA 16 s"), msg


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size"),
    (["--length-quantum", "-1"], "--length-quantum"),
    (["--batch-size", "4", "--clearvoice-compat"], "--clearvoice-compat decodes file by file"),
])
def test_bad_batch_options(args, message, tmp_path, capsys):
    ckpt, rate = tiny_checkpoint("FRCRN_SE_16K", tmp_path / "tiny.pt")
    inputs = write_inputs(tmp_path / "in", rate)
    try:
        code = enhance.main(["--checkpoint", str(ckpt), "--input", str(inputs), "--output-dir", str(tmp_path / "o"),
                             *args])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.wav"))


def test_windows_of_pieces_equal_file_by_file(tmp_path):
    """Many windows (batch 2: a window closes at 8 pieces), equal-length files batched, a long
    file's segments batched together; the same numbers as se.enhance.enhance_signal."""
    from se.batching import enhance_batched
    from se.checkpoint import load_network
    from se.enhance import enhance_signal

    model, _ = load_network(tiny_checkpoint("FRCRN_SE_16K", tmp_path / "tiny.pt")[0])
    rng = np.random.default_rng(3)
    lengths = [4000, 4000, 6400, 4000, 30000, 6400, 5000, 4000, 4000, 6400, 12000]
    signals = [(f"s{i}", 0.1 * rng.standard_normal(n)) for i, n in enumerate(lengths)]
    got = dict(enhance_batched(model, signals, 2, segment=8000, overlap=2000))
    assert sorted(got) == sorted(name for name, _ in signals)
    for name, x in signals:
        want = enhance_signal(model, x, 8000, 2000)
        assert len(got[name]) == len(x) and np.abs(want).max() > 1e-3
        assert np.abs(got[name] - want).max() <= 1e-5
