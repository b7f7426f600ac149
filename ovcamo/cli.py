"""Console commands: ``ovcamo-world``, ``ovcamo-micro-clip``, ``ovcamo-train``, ``ovcamo-eval``,
``ovcamo-predict``, ``ovcamo-generate``, ``ovcamo-loop`` and ``ovcamo-demo`` (also
``python -m ovcamo <command> …``).

Each command composes its Hydra config from :data:`ovcamo.CONF_DIR` and calls one function of the
package; the work lives there, and nothing in the package imports this module. One wrapper serves
all eight, so that they behave as one toolkit:

- every command takes ``out_dir=``;
- a key only the OVCamo data config has (``data.root`` or one of its six paths, e.g.
  ``data.class_info=…``) selects ``data=ovcamo`` where the command's default is the micro-world;
- ``check=true`` writes nothing: no run folder, no ``.hydra/``, no log file;
- a bad override, an unresolvable value, a missing file, a missing optional dependency or one of
  the toolkit's own input errors ends with one paragraph on stderr and exit status 2, never a
  traceback (with ``HYDRA_FULL_ERROR=1`` set, a composition error keeps Hydra's traceback).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

from ovcamo import CONF_DIR as _CONF_DIR
from ovcamo.extras import missing_extra_message

CONF_DIR = str(_CONF_DIR)

#: Appended to the overrides of ``check=true``: Hydra then creates no folder and writes no file
#: but a multirun's ``multirun.yaml``, which goes to a temporary sweep folder removed afterwards.
CHECK_OVERRIDES = (
    "hydra.run.dir=.",
    "hydra.sweep.subdir=.",
    "hydra.output_subdir=null",
    "hydra/job_logging=stdout",
)

#: The toolkit's own errors about the user's input (data, weights, settings), by module. Only
#: modules already imported are looked at: an error class whose module never loaded was not raised.
USER_ERRORS = {
    "ovcamo.checkpoint": ("CheckpointError",),
    "ovcamo.data.io": ("PathEscapeError",),
    "ovcamo.data.ovcamo_format": ("DatasetFormatError", "DatasetValidationError"),
    "ovcamo.data.mixing": ("SyntheticSetError",),
    "ovcamo.data.world": ("WorldConfigError",),
    "ovcamo.engine.check": ("CheckFailed",),
    "ovcamo.engine.evaluate": ("EvaluationError",),
    "ovcamo.engine.predict": ("SampleReadError",),
    "ovcamo.engine.predict_images": ("PredictInputError",),
    "ovcamo.engine.train": ("ResumeError",),
    "generation.lakered.convert": ("ConversionError",),
    "generation.planner": ("PlanError",),
}


@dataclass(frozen=True)
class Command:
    """One console command: its Hydra config and the function ``module:name`` that runs it."""

    name: str
    config_name: str
    target: str
    summary: str

    @property
    def prog(self) -> str:
        return f"ovcamo-{self.name}"

    def __call__(self, argv: Sequence[str] | None = None) -> None:
        run_command(self, sys.argv[1:] if argv is None else list(argv))


world = Command("world", "world", "ovcamo.data.world:main", "render (or reuse) a micro-world")
micro_clip = Command(
    "micro-clip", "micro_clip", "ovcamo.engine.micro_clip:main", "train (or reuse) the micro CLIP"
)
train = Command("train", "train", "ovcamo.engine.train:main", "train a segmenter")
evaluate = Command(
    "eval", "eval", "ovcamo.engine.evaluate:main", "score predictions or a checkpoint (OVCOS)"
)
predict = Command(
    "predict",
    "predict",
    "ovcamo.engine.predict_images:main",
    "segment your own images with a trained model",
)
generate = Command(
    "generate", "generate", "generation.run:main", "write a synthetic OVCamo-format set"
)
loop = Command(
    "loop", "loop", "ovcamo.engine.loop:main", "generate → train without/with → evaluate → report"
)
demo = Command("demo", "demo", "ovcamo.demo:main", "try a trained model in the browser (gradio)")

#: ``python -m ovcamo <name>``.
COMMANDS = {c.name: c for c in (world, micro_clip, train, evaluate, predict, generate, loop, demo)}


class CommandError(Exception):
    """A problem the user fixes on the command line; the message is the whole paragraph."""


def fail(prog: str, message: str) -> NoReturn:
    """Print ``prog: message`` as one paragraph on stderr and exit with status 2."""
    print(f"{prog}: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_command(command: Command, argv: list[str]) -> None:
    """Compose ``command``'s config from ``argv`` (Hydra's command line) and run it; ``--help``
    (``-h``) prints :func:`command_help` instead."""
    if any(a in ("--help", "-h") for a in argv):
        print(command_help(command))
        return
    scratch = tempfile.mkdtemp(prefix="ovcamo-check-")
    try:
        argv = prepare_arguments(command.config_name, argv, scratch)
        _run_hydra(command, argv)
    except CommandError as e:
        fail(command.prog, str(e))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_hydra(command: Command, argv: list[str]) -> None:
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    started = False

    @hydra.main(version_base=None, config_path=CONF_DIR, config_name=command.config_name)
    def task(cfg: Any) -> None:
        nonlocal started
        started = True
        _call(command, cfg)

    saved = sys.argv
    sys.argv = [saved[0] if saved else command.prog, *argv]
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        with _hydra_raises():
            task()
    except (HydraException, OmegaConfBaseException) as e:
        if wants_traceback or (started and not _is_composition_error(e)):
            raise
        fail(command.prog, describe_config_error(command, e))
    except (FileExistsError, NotADirectoryError, PermissionError) as e:
        if started or e.filename is None:
            raise
        # Hydra could not make the run's folder (out_dir, or hydra.run.dir, is a file or not
        # writable) before the command began.
        fail(
            command.prog,
            f"cannot create the run folder {e.filename} ({e.strerror}): out_dir= (or "
            "hydra.run.dir=) must name a folder that can be created; choose another",
        )
    finally:
        sys.argv = saved


@contextlib.contextmanager
def _hydra_raises() -> Iterator[None]:
    """Hydra prints composition errors and exits 1 unless ``HYDRA_FULL_ERROR`` is set, in which
    case it raises them: the wrapper sets it so that it can word them itself."""
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


def _call(command: Command, cfg: Any) -> None:
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    module, _, name = command.target.partition(":")
    try:
        _refuse_settings(cfg)
        getattr(importlib.import_module(module), name)(cfg)
    except SystemExit as e:
        # The command reported bad input itself (status 2): nothing of the run may stay behind.
        if e.code == 2:
            _remove_hydra_leftovers()
        raise
    except (MissingMandatoryValue, InterpolationResolutionError) as e:
        key = getattr(e, "full_key", "") or "?"
        fail(
            command.prog,
            f"the config value {key} cannot be resolved ({_one_line(str(e))}); set it on the "
            f"command line ({key}=…); `{command.prog} --cfg job` prints the whole config",
        )
    except Exception as e:
        message = _missing_extra(e)
        if message is None and isinstance(
            e, (FileNotFoundError, FileExistsError, SettingError, *_user_error_types())
        ):
            message = str(e)
        if message is None:
            raise
        _remove_hydra_leftovers()
        fail(command.prog, message)


class SettingError(ValueError):
    """A setting no run can use (a batch size of 0, an ``out_dir`` that is a file, ...)."""


def _refuse_settings(cfg: Any) -> None:
    """Settings every command shares, checked before any work: the numbers of
    :func:`ovcamo.engine.check.setting_problems` and an ``out_dir`` no folder can be made at."""
    from ovcamo.data.io import out_dir_problem
    from ovcamo.engine.check import setting_problems

    problems = [str(p) for p in setting_problems(cfg)]
    try:
        out_dir = cfg.get("out_dir")
    except Exception:  # unresolvable: reported where the command reads it
        out_dir = None
    if out_dir and (problem := out_dir_problem(Path(str(out_dir)).expanduser())):
        problems.append(f"out_dir={out_dir}: {problem}; choose a folder the results can go to")
    if problems:
        raise SettingError("; ".join(problems))


def _remove_hydra_leftovers() -> None:
    """After a refused run, the folder Hydra made for it when it holds nothing but Hydra's own
    files (``.hydra/`` and the job's log), and the empty folders above it inside the working
    directory: a run that wrote no result leaves no folder behind. A folder with anything else in
    it (an earlier run's results) is left as it is."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    folder = Path(hc.runtime.output_dir).resolve()
    own = {".hydra", f"{hc.job.name}.log"}
    cwd = Path.cwd().resolve()
    if folder == cwd or folder in cwd.parents:  # hydra.run.dir=. : the user's own folder
        return
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= own:
        for handler in logging.getLogger().handlers[:]:
            if (
                isinstance(handler, logging.FileHandler)
                and folder in Path(handler.baseFilename).parents
            ):
                logging.getLogger().removeHandler(handler)
                handler.close()
        shutil.rmtree(folder, ignore_errors=True)
        # Hydra made the folders above it too (runs/loop/ for runs/loop/<time>): those left
        # empty go as well, up to the working directory.
        for parent in folder.parents:
            if cwd not in parent.parents or any(parent.iterdir()):
                break
            parent.rmdir()


def _missing_extra(error: BaseException) -> str | None:
    """The extra to install when ``error``, or an error it was raised from, is the import of a
    missing optional dependency (builders re-raise import errors as their own)."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ImportError) and (message := missing_extra_message(cause)):
            return message
        cause = cause.__cause__ or cause.__context__
    return None


def _user_error_types() -> tuple[type[BaseException], ...]:
    found = []
    for module, names in USER_ERRORS.items():
        loaded = sys.modules.get(module)
        found += [getattr(loaded, n) for n in names if loaded is not None and hasattr(loaded, n)]
    return tuple(found)


def _is_composition_error(error: BaseException) -> bool:
    from hydra.errors import ConfigCompositionException, OverrideParseException

    return isinstance(error, ConfigCompositionException | OverrideParseException)


# ---------------------------------------------------------------- arguments


def _parse(argv: Sequence[str]) -> tuple[Any, list[Any]]:
    """Hydra's own reading of a command line: its flags, and the parsed overrides."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    args = get_args_parser().parse_args(list(argv))
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except OverrideParseException as e:
        raise CommandError(
            f"cannot read the override {e.override!r}: {_one_line(e.message)}. Overrides are "
            "key=value (a list is [a,b], a value with spaces goes in quotes)"
        ) from e
    return args, overrides


def prepare_arguments(config_name: str, argv: Sequence[str], scratch: str = ".") -> list[str]:
    """``argv`` with what makes the commands consistent appended: ``data=ovcamo`` when a key only
    the OVCamo data config has is set on a command whose default data is the micro-world, and
    for ``check=true`` :data:`CHECK_OVERRIDES` with ``scratch`` as the sweep folder."""
    args, overrides = _parse(argv)
    if args.help or args.hydra_help or args.shell_completion:
        return list(argv)
    extra: list[str] = []
    groups = {o.key_or_group for o in overrides if "." not in o.key_or_group}
    sets_ovcamo_key = any(
        o.key_or_group.split(".")[:1] == ["data"]
        and o.key_or_group.count(".") >= 1
        and o.key_or_group.split(".")[1] in ovcamo_only_data_keys()
        and not o.is_delete()
        for o in overrides
    )
    if sets_ovcamo_key and "data" not in groups and "data" in config_groups(config_name):
        extra.append("data=ovcamo")
    if any(
        o.key_or_group == "check" and not o.is_sweep_override() and o.value() is True
        for o in overrides
    ):
        extra += [*CHECK_OVERRIDES, f"hydra.sweep.dir={scratch}"]
    return [*argv, *extra]


@cache
def ovcamo_only_data_keys() -> frozenset[str]:
    """Keys of ``data/ovcamo.yaml`` that ``data/micro.yaml`` lacks: the root and the six paths."""
    from omegaconf import OmegaConf

    ovcamo = OmegaConf.load(_CONF_DIR / "data" / "ovcamo.yaml")
    micro = OmegaConf.load(_CONF_DIR / "data" / "micro.yaml")
    return frozenset(str(k) for k in ovcamo) - frozenset(str(k) for k in micro)


@cache
def config_groups(config_name: str) -> frozenset[str]:
    """Groups the primary config ``config_name`` selects in its defaults list."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.load(_CONF_DIR / f"{config_name}.yaml").get("defaults") or []
    names = set()
    for entry in defaults:
        if OmegaConf.is_dict(entry):
            names.update(re.sub(r"^(override|optional)\s+", "", str(k)).lstrip("/") for k in entry)
    return frozenset(names)


# ---------------------------------------------------------------- help

#: The flags Hydra reads on every command's line, for ``--help``.
HYDRA_FLAGS = (
    "Hydra flags: --cfg job|hydra|all (print the config, run nothing), --resolve, --package "
    "PKG, --info, -m/--multirun (sweep comma-separated values), -cp/-cn (another config), "
    "--hydra-help (Hydra's own help)"
)
_HELP_VALUE_WIDTH = 48


def command_help(command: Command) -> str:
    """``ovcamo-<cmd> --help``: the command's usage (its config file's opening comment), its
    config groups with their default and options, and its top-level keys with defaults (nested
    ones flattened as ``node.key``) and the comment above each, then Hydra's flags."""
    from omegaconf import OmegaConf

    path = _CONF_DIR / f"{command.config_name}.yaml"
    text = path.read_text(encoding="utf-8")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(cfg, dict)
    usage = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        usage.append("  " + line[1:].strip())
    lines = [
        f"{command.prog}: {command.summary}",
        "",
        f"Usage: {command.prog} [group=option ...] [key=value ...] [Hydra flags]",
    ]
    lines += [*usage, ""]

    groups = []
    for entry in cfg.get("defaults") or []:
        if not isinstance(entry, dict):
            continue
        for key, default in entry.items():
            name = re.sub(r"^(override|optional)\s+", "", str(key)).lstrip("/")
            if name.startswith("hydra"):
                continue
            folder = _CONF_DIR / name
            options = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
            groups.append(
                f"  {name}={_help_value(default)}    options: {', '.join(options) or '-'}"
            )
    if groups:
        lines += ["Config groups (group=option):", *groups, ""]

    comments = _key_comments(text)
    lines.append("Keys (key=value; the default is shown):")
    for key, value in cfg.items():
        if key in ("defaults", "hydra"):
            continue
        for name, leaf in _flatten(str(key), value):
            shown = _help_value(leaf)
            if len(shown) > _HELP_VALUE_WIDTH:
                shown = shown[: _HELP_VALUE_WIDTH - 1] + "…"
            note = comments.get(name, "")
            lines.append(f"  {name}={shown}" + (f"    # {note}" if note else ""))
    lines += [
        "",
        HYDRA_FLAGS,
        f"`{command.prog} --cfg job` prints every key of the composed config, groups included.",
    ]
    return "\n".join(lines)


def _help_value(value: Any) -> str:
    """A default as it is typed on the command line: ``null``, ``true``, ``[a, b]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_help_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}"
    return " ".join(str(value).split())


def _flatten(key: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        return [kv for k, v in value.items() for kv in _flatten(f"{key}.{k}", v)]
    return [(key, value)]


def _key_comments(text: str) -> dict[str, str]:
    """Top-level key → its comment in a config file: the comment lines right above it (their
    first sentence), else its inline comment."""
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            above.append(line[1:].strip())
            continue
        m = re.match(r"^([A-Za-z_][\w-]*):[^#]*(?:#\s*(.*))?$", line)
        if m:
            block = " ".join(above)
            first = re.split(r"(?<=\.)\s", block, maxsplit=1)[0] if block else ""
            comments[m.group(1)] = first or (m.group(2) or "").strip()
        above = []
    return comments


# ---------------------------------------------------------------- messages


def _one_line(text: str) -> str:
    """Lines joined into one: a sentence end is followed by a space, anything else by ``; ``."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    out = lines[:1]
    for line in lines[1:]:
        out.append((" " if out[-1][-1] in ".:;?!" else "; ") + line)
    return "".join(out)


def describe_config_error(command: Command, error: BaseException) -> str:
    """One paragraph for an override Hydra could not apply: the key, and what to do."""
    from hydra.errors import MissingConfigException

    cause = error.__cause__
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    override = re.match(r"Could not override '([^']+)'", lines[0]) if lines else None
    if override and cause is not None and "not in struct" in str(cause):
        key = override.group(1)
        guess = suggest_keys(command.config_name, key)
        parts = key.split(".")
        data_hint = (
            len(parts) > 1
            and parts[0] == "data"
            and parts[1] in ovcamo_only_data_keys()
            and "data" in config_groups(command.config_name)
        )
        return (
            f"there is no key '{key}' in the {command.prog} config"
            + (f"; did you mean {' or '.join(repr(g) for g in guess)}?" if guess else ".")
            + (
                f" {key} is a key of the real dataset's config: add data=ovcamo."
                if data_hint
                else ""
            )
            + f" `{command.prog} --cfg job` prints every key with its value."
        )
    if isinstance(error, MissingConfigException) and error.options:
        return f"{lines[0].removeprefix('In ')}: choose one of {', '.join(sorted(error.options))}."
    text = _one_line("\n".join(lines + ([str(cause)] if cause is not None else [])))
    return f"{text.rstrip('.')}. `{command.prog} --cfg job` prints every key with its value."


def suggest_keys(config_name: str, key: str, n: int = 2) -> list[str]:
    """Keys of the default config close to ``key``: same last name first, then by spelling."""
    keys = _default_keys(config_name)
    last = key.split(".")[-1]
    same_name = [k for k in keys if k.split(".")[-1] == last and k != key]
    if same_name:
        return sorted(same_name, key=lambda k: -difflib.SequenceMatcher(None, k, key).ratio())[:n]
    return difflib.get_close_matches(key, keys, n=n, cutoff=0.75)


@cache
def _default_keys(config_name: str) -> list[str]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(CONF_DIR, version_base=None):
        cfg = compose(config_name)
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                keys.append(f"{prefix}{k}")
                walk(v, f"{prefix}{k}.")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return keys
