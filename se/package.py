"""Model packages: an experiment dir turned into a folder a user can publish (se.bin.package).

Layout (uploadable to a model hub as is; README.md is the model card, with hub front matter)::

    DIR/README.md      model card: network, sampling rate, training data and hours, command,
                       git sha, results table, licence, how to enhance with it
    DIR/package.json   manifest: the same facts, machine-readable, and every file's sha256
    DIR/model.pt       the chosen (or averaged) checkpoint, weights only (no optimiser state)
    DIR/config.yaml    the experiment's resolved training config
    DIR/onnx/          se.export.export_model(model.pt, network, 'onnx', DIR/onnx)
    DIR/torchscript/   the same, 'torchscript'

``se.bin.enhance --model-dir DIR`` enhances with DIR/model.pt.
"""

from __future__ import annotations

import datetime
import json
import logging
import shlex
import shutil
import tempfile
from pathlib import Path

from se.checkpoint import CheckpointError, file_sha256, resolve_checkpoint, torch_load
from se.cli import UserError

log = logging.getLogger(__name__)

FORMAT = "se-recipes model package 1"
EXPORT_FORMATS = ("onnx", "torchscript")
MODEL_KEYS = ("network", "network_kwargs", "sampling_rate", "config", "epoch", "step", "averaged_from")


class PackageError(UserError, ValueError):
    pass


def package_checkpoint(model_dir: str | Path) -> Path:
    """DIR/model.pt of a package folder (what se.bin.enhance --model-dir loads)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PackageError(f"{model_dir}: model dir not found")
    for name in ("package.json", "model.pt"):
        if not (model_dir / name).is_file():
            raise PackageError(f"{model_dir}: no {name}; not a model package (make one with python -m se.bin.package)")
    return model_dir / "model.pt"


def choose_model(exp_dir: Path, checkpoint: str | None, average: int | None) -> tuple[dict, str]:
    """(weights-only self-describing checkpoint, where it came from)."""
    if average:
        from se.bin.average_checkpoints import average as average_files, best_checkpoints

        files = best_checkpoints(exp_dir, average)
        state, source = average_files(files), f"average of {len(files)} best checkpoints ({', '.join(f.name for f in files)})"
    else:
        file = resolve_checkpoint(checkpoint or exp_dir)
        state, source = torch_load(file), file.name
        if not (isinstance(state, dict) and "network" in state and "model" in state):
            raise CheckpointError(f"{file}: not a checkpoint of our trainer (no network name); package a trained "
                                  "experiment's checkpoint")
    return {k: state[k] for k in ("model", *MODEL_KEYS) if k in state}, source


def _recorded_option(command: list[str], option: str) -> str | None:
    for i, arg in enumerate(command):
        if arg == option and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


def training_data(exp_dir: Path, conf: dict) -> tuple[str, list[dict]]:
    """(training command, [{set, dir, utterances, hours}]) from EXP/train_provenance.yaml.

    Relative data dirs are taken from the directory training ran in, found from the recorded
    --exp-dir (e.g. ``exp/x`` recorded, EXP = /r/egs/mini/exp/x: training ran in /r/egs/mini).
    """
    import yaml

    from se.data import DataDir

    prov_file = exp_dir / "train_provenance.yaml"
    if not prov_file.is_file():
        raise PackageError(f"{exp_dir}: no train_provenance.yaml; is this an experiment dir written by se.bin.train?")
    prov = yaml.safe_load(prov_file.read_text()) or {}
    argv = shlex.split(prov.get("command", ""))
    if argv and argv[0].endswith(("se/bin/train.py", "se.bin.train")):  # sys.argv[0] is a path on the training machine
        argv[0] = "python -m se.bin.train"
    command = " ".join([argv[0], *map(shlex.quote, argv[1:])]) if argv else ""
    recorded_exp = Path(_recorded_option(argv, "--exp-dir") or exp_dir)
    run_dir = Path.cwd()
    if not recorded_exp.is_absolute():
        tail = recorded_exp.parts
        here = exp_dir.resolve()
        if here.parts[len(here.parts) - len(tail):] == tail:
            run_dir = Path(*here.parts[: len(here.parts) - len(tail)])
    sets = []
    for name, option, imported in (("train", "--train-data", "train"), ("valid", "--valid-data", "valid")):
        recorded = _recorded_option(argv, option)
        if recorded:
            path = Path(recorded) if Path(recorded).is_absolute() else run_dir / recorded
        elif (exp_dir / "data" / imported / "wav.scp").is_file():  # a ClearVoice list imported by se.bin.train
            recorded, path = str(exp_dir / "data" / imported), exp_dir / "data" / imported
        elif name == "train" and conf.get("simulation"):
            sets.append({"set": name, "dir": None, "utterances": None, "hours": None,
                         "note": "simulated on the fly (simulation: block of config.yaml)"})
            continue
        else:
            continue
        entry = {"set": name, "dir": recorded, "utterances": None, "hours": None}
        if (path / "wav.scp").is_file():
            d = DataDir(path)
            rate = d.sampling_rate or conf.get("sampling_rate")
            samples = sum(u.num_samples for u in d.utterances)
            entry.update(utterances=len(d), hours=round(samples / rate / 3600, 4) if rate else None)
        else:
            entry["note"] = f"not found at packaging time ({path})"
            log.warning("%s data dir %s not found; its hours are left out of the card", name, path)
        sets.append(entry)
    return command, sets


def results_tables(results_md: Path) -> list[str]:
    """The per-test-set sections of RESULTS.md (heading, table, rates line), images left out."""
    if not results_md.is_file():
        return []
    out, keep = [], False
    for line in results_md.read_text().splitlines():
        if line.startswith("## "):
            keep = line[3:].strip() not in ("Environment", "Commands")
            if keep:
                out += ["", "#" + line, ""]
        elif keep and line.startswith("|"):
            out.append(line)
        elif keep and line.startswith("Rates:"):
            out += ["", line]
    return out


def export_files(checkpoint: Path, network: str, formats: list[str], out_dir: Path) -> tuple[dict, str | None]:
    """{format: path relative to out_dir} made by se.export.export_model, or why none were made."""
    if not formats:
        return {}, "no export asked for (--formats none)"
    from se.checkpoint import load_network
    from se.export import export_model, unsupported_reason

    reason = unsupported_reason(load_network(checkpoint, network, "cpu", kernels=False)[0])
    if reason:
        return {}, f"not exported: {reason}; model.pt only"
    made = {}
    for fmt in formats:
        path = export_model(checkpoint, network, fmt, out_dir / fmt, quantize=None)
        made[fmt] = str(Path(path).relative_to(out_dir))
        log.info("exported %s: %s", fmt, made[fmt])
    return made, None


def model_card(manifest: dict, results: list[str], name: str) -> str:
    lic = manifest["licence"]
    front = ["---"] + ([f"license: {lic}"] if lic else []) + [
        "pipeline_tag: audio-to-audio",
        "tags:", "- speech-enhancement", "- denoising", f"- {manifest['network']}",
        "---",
    ]
    kwargs = ", ".join(f"{k}={v}" for k, v in manifest["network_kwargs"].items()) or "released architecture"
    ckpt = manifest["checkpoint"]
    train = manifest["training"]
    lines = front + [
        f"# {name}",
        "",
        f"Speech-enhancement model {manifest['network']}, trained with se-recipes.",
        "",
        "| | |",
        "| --- | --- |",
        f"| network | {manifest['network']} ({kwargs}) |",
        f"| sampling rate | {manifest['sampling_rate']} Hz (inputs at other rates are resampled in and out) |",
        f"| checkpoint | {ckpt['source']} (epoch {ckpt['epoch']}, step {ckpt['step']}) |",
        f"| training git sha | {train['git']} |",
        f"| packaged with git sha | {manifest['packaged']['git']} |",
        f"| licence | {lic or 'not specified (set one with --licence before publishing)'} |",
        "",
        "## Training data",
        "",
        "| set | data dir | utterances | hours |",
        "| --- | --- | ---: | ---: |",
    ]
    for s in train["data"]:
        hours = f"{s['hours']:.4f}" if s["hours"] is not None else s.get("note", "unknown")
        utts = s["utterances"] if s["utterances"] is not None else ""
        lines.append(f"| {s['set']} | {s['dir'] or ''} | {utts} | {hours} |")
    if not train["data"]:
        lines.append("| (not recorded) | | | |")
    lines += ["", "## Training command", "", "```bash", train["command"] or "# (not recorded)", "```"]
    if results:
        lines += ["", "## Results", "", "Copied from the experiment's RESULTS.md (noisy input as the baseline row)."]
        lines += results
    lines += [
        "", "## Use", "", "```bash",
        f"python -m se.bin.enhance --model-dir {name} --input noisy.wav --output-dir enhanced",
        *([f"python -m se.bin.enhance --backend onnxruntime --model-dir {name}/onnx --input noisy.wav "
           "--output-dir enhanced"] if "onnx" in manifest["exports"] else []),
        "```",
        "",
        "## Files",
        "",
    ]
    for path, info in manifest["files"].items():
        lines.append(f"- `{path}` ({info['bytes']} bytes, sha256 `{info['sha256'][:16]}…`)")
    if manifest["exports_skipped"]:
        lines.append(f"- exports: none ({manifest['exports_skipped']})")
    return "\n".join(lines) + "\n"


def build_package(exp_dir: str | Path, out_dir: str | Path, checkpoint: str | None = None,
                  average: int | None = None, licence: str | None = None,
                  formats: list[str] = list(EXPORT_FORMATS)) -> dict:
    """Writes the package folder (all of it, or nothing: built in a hidden folder, then renamed)
    and returns its manifest."""
    import torch
    import yaml

    from se.atomic import atomic_write_text
    from se.provenance import git_sha, versions

    exp_dir, out_dir = Path(exp_dir), Path(out_dir)
    if not exp_dir.is_dir():
        raise PackageError(f"{exp_dir}: experiment dir not found")
    if not (exp_dir / "config.yaml").is_file():
        raise PackageError(f"{exp_dir}: no config.yaml; is this an experiment dir written by se.bin.train?")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PackageError(f"{out_dir}: exists and is not an empty directory; choose a new --out-dir")
    conf = yaml.safe_load((exp_dir / "config.yaml").read_text()) or {}
    model, source = choose_model(exp_dir, checkpoint, average)
    command, data = training_data(exp_dir, conf)
    prov = yaml.safe_load((exp_dir / "train_provenance.yaml").read_text()) or {}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        torch.save(model, tmp / "model.pt")
        shutil.copyfile(exp_dir / "config.yaml", tmp / "config.yaml")
        exports, skipped = export_files(tmp / "model.pt", model["network"], formats, tmp)
        if skipped:
            log.warning("no export files: %s", skipped)
        files = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format": FORMAT,
            "name": out_dir.name,
            "network": model["network"],
            "network_kwargs": model.get("network_kwargs", {}),
            "sampling_rate": model.get("sampling_rate"),
            "licence": licence,
            "checkpoint": {"file": "model.pt", "source": source, "epoch": model.get("epoch"),
                           "step": model.get("step"), "averaged_from": model.get("averaged_from")},
            "training": {"exp_dir": str(exp_dir), "command": command, "git": prov.get("git", "unknown"),
                         "data": data},
            "packaged": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                         "git": git_sha(), "versions": versions(("torch", "numpy"))},
            "exports": exports,
            "exports_skipped": skipped,
            "files": files,
        }
        atomic_write_text(tmp / "package.json", json.dumps(manifest, indent=2) + "\n")
        atomic_write_text(tmp / "README.md", model_card(manifest, results_tables(exp_dir / "RESULTS.md"),
                                                        out_dir.name))
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
