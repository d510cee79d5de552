"""se.bin.make_source_dir: scanning, ids, resampling once, channel 0 of RIRs, utt2spk, errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import tone_pair
from se.bin.make_source_dir import main
from se.data import read_scp
from se.resample import resample

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, x: np.ndarray, fs: int, subtype="FLOAT"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, fs, subtype=subtype)
    return x


@pytest.fixture
def corpus(tmp_path):
    """speech/ with readers in nested folders at 16 and 48 kHz; noise/ flat at 16 kHz."""
    sp, no = tmp_path / "speech", tmp_path / "noise"
    sig = {}
    sig["a16"] = _write(sp / "reader_0001" / "book_01_reader_0001_0.wav", tone_pair(0.5, 16000, 1)[1], 16000)
    sig["a48"] = _write(sp / "reader_0002" / "book_02_reader_0002_3.wav", tone_pair(0.4, 48000, 2)[1], 48000)
    sig["n"] = _write(no / "fan noise.wav", 0.1 * np.random.default_rng(0).standard_normal(8000), 16000)
    return tmp_path, sig


def test_ids_paths_resampling_utt2spk(corpus):
    root, sig = corpus
    out, rdir = root / "src16", root / "dump16"
    rc = main(["--audio-dir", str(root / "speech"), "--audio-dir", str(root / "noise"), "--out", str(out),
               "--fs", "16000", "--resample-dir", str(rdir), "--utt2spk-regex", r"reader_(\d+)|fan"])
    assert rc == 0
    wav = read_scp(out / "wav.scp")
    ids = ["noise-fan_noise", "speech-reader_0001-book_01_reader_0001_0", "speech-reader_0002-book_02_reader_0002_3"]
    assert list(wav) == ids
    # the 16 kHz file is used where it is; the 48 kHz one resampled once into RDIR, mirroring the layout
    assert wav[ids[1]] == str((root / "speech/reader_0001/book_01_reader_0001_0.wav").resolve())
    resampled = rdir / "speech/reader_0002/book_02_reader_0002_3.wav"
    assert wav[ids[2]] == str(resampled.resolve())
    y, fs = sf.read(resampled)
    assert fs == 16000
    want = resample(sig["a48"], 48000, 16000)
    assert len(y) == len(want) == 6400
    assert np.max(np.abs(y - want)) < 2.0**-14  # PCM_16 quantisation only
    lengths = {k: int(v) for k, v in read_scp(out / "utt2num_samples").items()}
    assert lengths == {ids[0]: 8000, ids[1]: 8000, ids[2]: 6400}
    assert (out / "fs").read_text() == "16000\n"
    # group 1 where it took part, else the whole match
    assert read_scp(out / "utt2spk") == {ids[0]: "fan", ids[1]: "0001", ids[2]: "0002"}

    # a second run resumes: the resampled file is not written again
    mtime = resampled.stat().st_mtime_ns
    os.utime(resampled, ns=(mtime - 10**9, mtime - 10**9))
    assert main(["--audio-dir", str(root / "speech"), "--out", str(out), "--fs", "16000",
                 "--resample-dir", str(rdir / "speech")]) == 0
    assert resampled.stat().st_mtime_ns == mtime - 10**9
    # one folder: no folder prefix in the ids; no stale utt2spk
    assert list(read_scp(out / "wav.scp")) == ["reader_0001-book_01_reader_0001_0", "reader_0002-book_02_reader_0002_3"]
    assert not (out / "utt2spk").exists()


def test_multichannel_rirs(tmp_path):
    rng = np.random.default_rng(3)
    rir = rng.standard_normal((4000, 2)) * np.exp(-np.arange(4000) / 500)[:, None]
    _write(tmp_path / "rirs" / "room1" / "rir.wav", rir, 16000)
    out = tmp_path / "rir16"
    # refused without --first-channel, nothing written
    assert main(["--audio-dir", str(tmp_path / "rirs"), "--out", str(out), "--fs", "16000"]) == 1
    assert not out.exists()
    assert main(["--audio-dir", str(tmp_path / "rirs"), "--out", str(out), "--fs", "16000", "--first-channel"]) == 0
    path = read_scp(out / "wav.scp")["room1-rir"]
    assert path == str((out / "wav" / "room1" / "rir.wav").resolve())
    y, fs = sf.read(path)
    assert y.ndim == 1 and fs == 16000
    np.testing.assert_allclose(y, rir[:, 0], atol=1e-7)  # FLOAT: the tail keeps its precision
    # and at 8 kHz: channel 0, resampled
    assert main(["--audio-dir", str(tmp_path / "rirs"), "--out", str(tmp_path / "rir8"), "--fs", "8000",
                 "--first-channel"]) == 0
    y8, _ = sf.read(read_scp(tmp_path / "rir8/wav.scp")["room1-rir"])
    np.testing.assert_allclose(y8, resample(rir[:, 0], 16000, 8000), atol=1e-6)


@pytest.mark.parametrize("case, message", [
    ("missing", "audio directory not found"),
    ("empty", "no .wav/.flac files below this directory"),
    ("clash", "is also the id of"),
    ("regex", "does not match its path"),
    ("unreadable", "not a readable audio file"),
])  # fmt: skip
def test_errors_name_the_file(tmp_path, capsys, case, message):
    d = tmp_path / "in"
    d.mkdir()
    args = ["--audio-dir", str(d), "--out", str(tmp_path / "out"), "--fs", "16000"]
    x = np.zeros(1600) + 0.1
    if case == "missing":
        args[1] = str(tmp_path / "nope")
    elif case == "clash":
        _write(d / "a.wav", x, 16000)
        _write(d / "a.flac", x, 16000, subtype="PCM_16")
    elif case == "regex":
        _write(d / "x.wav", x, 16000)
        args += ["--utt2spk-regex", r"reader_(\d+)"]
    elif case == "unreadable":
        _write(d / "good.wav", x, 16000)
        (d / "bad.wav").write_bytes(b"RIFF not really")
    if case == "unreadable":  # once through the real command line: one line, no traceback
        out = subprocess.run([sys.executable, "-m", "se.bin.make_source_dir", *args], capture_output=True,
                             text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
        rc, err = out.returncode, out.stderr
        assert "Traceback" not in err
    else:
        capsys.readouterr()
        rc, err = main(args), capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert rc == 1
    assert message in err
    assert not (tmp_path / "out").exists()
    if case in ("clash", "unreadable", "regex"):
        assert str(d) in err


def test_holdout_split_by_speaker_and_by_file(tmp_path):
    d = tmp_path / "speech"
    for spk in ("anna", "bert", "carl", "dora", "emil"):
        for i in range(2):
            _write(d / f"{spk}_{i}.wav", np.full(800, 0.1), 16000)
    out = tmp_path / "src" / "speech"
    assert main(["--audio-dir", str(d), "--out", str(out), "--fs", "16000", "--holdout", "0.2", "0.2",
                 "--utt2spk-regex", r"^([a-z]+)_"]) == 0
    spk = {s: set(read_scp(tmp_path / f"src/speech_{s}/utt2spk").values()) for s in ("train", "valid", "test")}
    assert [len(spk[s]) for s in ("train", "valid", "test")] == [3, 1, 1]
    assert len(set().union(*spk.values())) == 5  # each speaker in exactly one set
    assert {s: len(read_scp(tmp_path / f"src/speech_{s}/wav.scp")) for s in spk} == {"train": 6, "valid": 2, "test": 2}
    # by file without a speaker pattern; the same seed gives the same split
    assert main(["--audio-dir", str(d), "--out", str(tmp_path / "f"), "--fs", "16000", "--holdout", "0.1", "0"]) == 0
    valid = read_scp(tmp_path / "f_valid/wav.scp")
    assert len(valid) == 1 and len(read_scp(tmp_path / "f_train/wav.scp")) == 9 and not (tmp_path / "f_test").exists()
    assert main(["--audio-dir", str(d), "--out", str(tmp_path / "g"), "--fs", "16000", "--holdout", "0.1", "0"]) == 0
    assert read_scp(tmp_path / "g_valid/wav.scp").keys() == valid.keys()
    # too few files for a held-out set
    few = tmp_path / "few"
    _write(few / "a.wav", np.full(800, 0.1), 16000)
    assert main(["--audio-dir", str(few), "--out", str(tmp_path / "h"), "--fs", "16000", "--holdout", "0.1", "0.1"]) == 1
    assert not (tmp_path / "h_train").exists()
