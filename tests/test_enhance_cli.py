"""se.bin.enhance: release checkpoints through the CLI (parity), inputs, outputs, bad input."""

import numpy as np
import pytest
import soundfile as sf
import torch

from se.bin import enhance
from se.models import build_network
from helpers import TINY_FRCRN
from release_checkpoints import release_checkpoint

@pytest.mark.parametrize("network", ["FRCRN_SE_16K", "MossFormer2_SE_48K", "MossFormerGAN_SE_16K"])
def test_release_checkpoint_compat_decode_reproduces_reference(network, clearvoice_data, release_fill, tmp_path):
    ckpt = release_checkpoint(network, clearvoice_data, release_fill, tmp_path / "release.pt", prefix=True)
    ref = np.load(clearvoice_data / f"{network}.parity.npz")
    rate = 48000 if network.endswith("48K") else 16000
    wav = tmp_path / "in" / "parity_input.wav"
    wav.parent.mkdir()
    sf.write(wav, ref["decode_raw_input"], rate, subtype="FLOAT")
    out = tmp_path / "out"
    assert enhance.main(["--network", network, "--checkpoint", str(ckpt), "--input", str(wav),
                         "--output-dir", str(out), "--clearvoice-compat", "--output-subtype", "FLOAT"]) == 0
    y, fs = sf.read(out / "parity_input.wav")
    want = ref["decode_output"]
    assert fs == rate and y.shape == want.shape
    # float32 file: the write itself rounds to float32, far below the tolerance
    assert np.max(np.abs(y - want)) <= 2e-4 * max(1.0, np.max(np.abs(want)))


@pytest.fixture()
def tiny_frcrn(trained_frcrn):
    """The session's tiny trained experiment dir (tests/conftest.py), read by --checkpoint."""
    return trained_frcrn


def write(path, x, rate, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate, **kw)
    return path


def noise(n, seed=0):
    return 0.1 * np.random.default_rng(seed).standard_normal(n)


def test_dir_scp_lengths_names_and_segmented_decoding(tiny_frcrn, tmp_path):
    a = write(tmp_path / "in/a.wav", noise(12345), 16000)
    write(tmp_path / "in/b.flac", noise(40000, 1), 16000)
    out = tmp_path / "out"
    assert enhance.main(["--checkpoint", str(tiny_frcrn), "--input", str(tmp_path / "in"), "--output-dir", str(out),
                         "--segment-length", "1.0", "--segment-overlap", "0.25"]) == 0
    assert sf.info(out / "a.wav").frames == 12345 and sf.info(out / "b.wav").frames == 40000
    scp = tmp_path / "wav.scp"
    scp.write_text(f"uttA {a}\n")
    assert enhance.main(["--checkpoint", str(tiny_frcrn), "--input", str(scp), "--output-dir", str(tmp_path / "o2")]) == 0
    assert sf.info(tmp_path / "o2/uttA.wav").frames == 12345


def test_segmented_equals_one_pass_for_short_input(tiny_frcrn, tmp_path):
    from se.checkpoint import load_network
    from se.enhance import enhance_signal

    model, _ = load_network(tiny_frcrn)
    x = noise(16000)
    one = enhance_signal(model, x, segment=32000, overlap=4000)
    seg = enhance_signal(model, x, segment=6000, overlap=2000)
    assert one.shape == seg.shape == (16000,)
    # the crossfaded output stays close to the one-pass output (the tiny model is nearly local)
    assert np.corrcoef(one, seg)[0, 1] > 0.9


def test_other_rate_is_resampled_and_written_at_input_rate(tiny_frcrn, tmp_path, caplog):
    write(tmp_path / "x48.wav", noise(24000), 48000)
    with caplog.at_level("INFO"):
        assert enhance.main(["--checkpoint", str(tiny_frcrn), "--input", str(tmp_path / "x48.wav"),
                             "--output-dir", str(tmp_path / "o")]) == 0
    info = sf.info(tmp_path / "o/x48.wav")
    assert info.samplerate == 48000 and info.frames == 24000
    assert "48000 Hz input resampled to 16000 Hz" in caplog.text


def test_clipping_is_counted_and_reported(tiny_frcrn, tmp_path, caplog):
    x = np.clip(noise(16000) * 40, -1, 1)  # loud input -> output beyond full scale
    write(tmp_path / "loud.wav", x, 16000, subtype="FLOAT")
    with caplog.at_level("INFO"):
        assert enhance.main(["--checkpoint", str(tiny_frcrn), "--input", str(tmp_path / "loud.wav"),
                             "--output-dir", str(tmp_path / "o")]) == 0
    y, _ = sf.read(tmp_path / "o/loud.wav")
    if np.max(np.abs(y)) >= 1.0 - 2**-15:
        assert "samples exceeded full scale and were clipped" in caplog.text


@pytest.mark.parametrize("case", ["missing", "empty", "stereo", "unreadable", "scp_missing"])
def test_bad_input_is_a_clear_error_and_writes_nothing(case, tiny_frcrn, tmp_path, capsys):
    good = write(tmp_path / "in/good.wav", noise(8000), 16000)
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.wav").write_bytes(b"keep me")
    bad = tmp_path / "in/bad.wav"
    if case == "empty":
        bad.write_bytes(b"")
    elif case == "stereo":
        sf.write(bad, np.zeros((800, 2)), 16000)
    elif case == "unreadable":
        bad.write_bytes(b"RIFF....junk" * 20)
    target = str(tmp_path / "in")
    if case == "missing":
        target = str(tmp_path / "in/nothere.wav")
    if case == "scp_missing":
        scp = tmp_path / "list.scp"
        scp.write_text(f"good {good}\nbad {tmp_path}/nothere.wav\n")
        target = str(scp)
    assert enhance.main(["--checkpoint", str(tiny_frcrn), "--input", target, "--output-dir", str(out)]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["earlier.wav"]  # nothing written, nothing lost
    assert (out / "earlier.wav").read_bytes() == b"keep me"
    expected = {"missing": "nothere.wav: input not found", "empty": "bad.wav: file is empty",
                "stereo": "bad.wav: 2 channels", "unreadable": "bad.wav: not a readable audio file",
                "scp_missing": "list.scp line 2"}[case]
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err  # one line


def test_checkpoint_of_another_network_is_refused(tiny_frcrn, tmp_path, capsys):
    write(tmp_path / "a.wav", noise(8000), 16000)
    assert enhance.main(["--network", "MossFormerGAN_SE_16K", "--checkpoint", str(tiny_frcrn),
                         "--input", str(tmp_path / "a.wav"), "--output-dir", str(tmp_path / "o")]) == 1
    assert "checkpoint of network FRCRN_SE_16K, but --network MossFormerGAN_SE_16K" in capsys.readouterr().err
    # a release-format file of the wrong network: key mismatch named
    sd = build_network("FRCRN_SE_16K", {"network_kwargs": TINY_FRCRN}).state_dict()
    torch.save({"model": sd}, tmp_path / "rel.pt")
    assert enhance.main(["--network", "FRCRN_SE_16K", "--checkpoint", str(tmp_path / "rel.pt"),
                         "--input", str(tmp_path / "a.wav"), "--output-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "does not fit network FRCRN_SE_16K" in err and "shape mismatch" in err
    assert not (tmp_path / "o" / "a.wav").exists()


def test_too_short_for_one_frame(tmp_path, capsys):
    """MossFormer2 at 48 kHz: the default path pads a 500-sample file; the ClearVoice path
    cannot frame it and says which file."""
    from se.models import network_kwargs

    conf = {"network_kwargs": {"num_blocks": 1, "width": 32, "query_key_dim": 16, "fsmn_inner": 16,
                               "fsmn_lorder": 3, "group_size": 32}}
    model = build_network("MossFormer2_SE_48K", conf)
    ckpt = tmp_path / "mf2.pt"
    torch.save({"model": model.state_dict(), "network": "MossFormer2_SE_48K", "sampling_rate": 48000,
                "network_kwargs": network_kwargs("MossFormer2_SE_48K", conf)}, ckpt)
    short = write(tmp_path / "short.wav", noise(500), 48000)
    assert enhance.main(["--checkpoint", str(ckpt), "--input", str(short), "--output-dir", str(tmp_path / "a")]) == 0
    assert sf.info(tmp_path / "a/short.wav").frames == 500
    assert enhance.main(["--checkpoint", str(ckpt), "--input", str(short), "--output-dir", str(tmp_path / "b"),
                         "--clearvoice-compat"]) == 1
    err = capsys.readouterr().err
    assert "short.wav" in err and "shorter than one 1920-sample window" in err
    assert not (tmp_path / "b/short.wav").exists()
