"""The run folder: configuration, ``progress.csv``, TensorBoard events, ``curve.png`` and checkpoints.

::

    runs/ALGO-ENV-SEED-TIMESTAMP/
        config.json     the resolved configuration, package versions, git commit, command line
        progress.csv    one row every ``log_every`` env steps and at every evaluation (appended on resume)
        events.*        TensorBoard scalars (when ``tensorboard`` is installed)
        curve.png       training and evaluation return against env steps (when matplotlib is installed)
        last.pt         the latest checkpoint (every ``checkpoint_every`` env steps, at the end, on Ctrl-C)
        best.pt         the checkpoint with the best deterministic evaluation return so far

A checkpoint is a dict: ``config``, ``learner`` (models, optimisers, SAC's target critics,
temperature and replay contents), ``counters`` (env steps, updates, ...) and ``rng`` (the torch,
numpy and python generator states).
"""

import csv
import datetime
import json
import os
import pathlib
import platform
import random
import subprocess
import sys
from typing import Any, Dict, List, Optional

import numpy as np
import torch

__all__ = ["Run", "Curve", "default_dir", "load_checkpoint", "rng_state", "set_rng_state", "versions", "plot_curve"]

FIELDS = [
    "env_steps",
    "updates",
    "wall_time",
    "steps_per_s",
    "episodes",
    "return_mean",
    "return_min",
    "return_max",
    "length_mean",
    "eval_return",
    "eval_return_std",
    "lag_mean",
    "lag_max",
    "lr",
]


def default_dir(algo: str, env: str, seed: int, root: str = "runs") -> pathlib.Path:
    """``runs/ALGO-ENV-SEED-TIMESTAMP`` (the env id's slashes become underscores)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return pathlib.Path(root) / f"{algo}-{env.replace('/', '_')}-{seed}-{stamp}"


def versions() -> Dict[str, str]:
    """Versions of python and of the packages a run depends on."""
    import gymnasium
    import optree

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "optree": optree.__version__,
    }
    try:
        from importlib.metadata import version

        out["rollout-engine"] = version("rollout-engine")
    except Exception:
        pass
    return out


def _git_commit() -> Optional[str]:
    try:
        here = pathlib.Path(__file__).resolve().parent
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return result.stdout.strip() or None
    except Exception:
        return None


def rng_state() -> Dict[str, Any]:
    """The torch (CPU, and CUDA where present), numpy and Python generator states."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`rng_state`; CUDA states only where this machine has as many devices (a
    checkpoint saved on a GPU resumes on a CPU, with the CPU generators restored)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def load_checkpoint(path: os.PathLike) -> Dict[str, Any]:
    """A checkpoint written by :meth:`Run.save` (on the CPU)."""
    return torch.load(path, map_location="cpu", weights_only=False)


class Curve:
    """``curve.png``: training and evaluation return against env steps, one figure redrawn in place.

    A run draws it at every evaluation. A new figure each time left its Agg pixel buffer (native
    memory) in matplotlib's reference cycles until Python's rare full collection: a 2x8 A2C run's
    learner grew by tens of MiB between collections. Here the figure, its canvas (which keeps one
    renderer for one size) and the two lines are made once; a redraw only sets the lines' data.
    Raises ``ImportError`` without matplotlib.
    """

    def __init__(self, title: str):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(7, 4))
        FigureCanvasAgg(self.figure)  # no pyplot: no global figure registry to close
        self.axes = self.figure.add_subplot()
        (self.train,) = self.axes.plot([], [], label="training episodes (mean)", alpha=0.7)
        (self.eval,) = self.axes.plot([], [], "o-", label="deterministic evaluation")
        self.axes.set_xlabel("env steps")
        self.axes.set_ylabel("episode return")
        self.axes.set_title(title)
        self.axes.grid(alpha=0.3)
        self.axes.legend()

    def draw(self, rows: List[Dict[str, Any]], path: os.PathLike) -> None:
        """Redraw from the progress ``rows`` into ``path``."""

        def series(key):
            points = [(float(r["env_steps"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
            return [list(axis) for axis in zip(*points)] if points else ([], [])

        self.train.set_data(*series("return_mean"))
        self.eval.set_data(*series("eval_return"))
        self.axes.relim()
        self.axes.autoscale_view()
        self.figure.tight_layout()
        self.figure.savefig(path, dpi=100)


def plot_curve(rows: List[Dict[str, Any]], path: os.PathLike, title: str) -> bool:
    """Training and evaluation return against env steps into ``path``; False without matplotlib."""
    try:
        Curve(title).draw(rows, path)
    except ImportError:
        return False
    return True


class Run:
    """A run folder being written; ``resume=True`` appends to an existing one.

    Parameters
    ----------
    path : path-like
        The folder (created if missing).
    config : dict
        The resolved configuration, written to ``config.json`` with versions, commit and ``argv``.
    """

    def __init__(self, path: os.PathLike, config: Dict[str, Any], argv: List[str], *, resume: bool = False):
        self.path = pathlib.Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.curve: Optional[Curve] = None  # made at the first plot
        self.csv_path = self.path / "progress.csv"
        record = {
            "config": config,
            "versions": versions(),
            "git_commit": _git_commit(),
            "command": [sys.executable, "-m", "zoo", *argv],
            "resumed": [],
        }
        config_path = self.path / "config.json"
        if resume and config_path.exists():
            previous = json.loads(config_path.read_text())
            record["resumed"] = previous.get("resumed", []) + [
                {"command": record["command"], "time": datetime.datetime.now().isoformat()}
            ]
            record["command"] = previous.get("command", record["command"])
        config_path.write_text(json.dumps(record, indent=2, default=list) + "\n")
        self.rows = self._read_rows() if resume else []
        self.fields: Optional[List[str]] = None
        if resume and self.csv_path.exists():
            with open(self.csv_path, newline="") as file:
                self.fields = next(csv.reader(file), None)
        elif self.csv_path.exists():
            self.csv_path.unlink()
        self.writer = _tensorboard(self.path)

    def _read_rows(self) -> List[Dict[str, Any]]:
        if not self.csv_path.exists():
            return []
        with open(self.csv_path, newline="") as file:
            return list(csv.DictReader(file))

    def log(self, row: Dict[str, Any]) -> None:
        """Append one row to ``progress.csv`` (the header is fixed by the first row) and to TensorBoard."""
        if self.fields is None:
            self.fields = FIELDS + sorted(key for key in row if key not in FIELDS)
            with open(self.csv_path, "w", newline="") as file:
                csv.writer(file).writerow(self.fields)
        with open(self.csv_path, "a", newline="") as file:
            csv.DictWriter(file, self.fields, extrasaction="ignore").writerow(
                {key: _format(value) for key, value in row.items()}
            )
        self.rows.append(row)
        if self.writer is not None:
            step = int(row["env_steps"])
            for key, value in row.items():
                if key != "env_steps" and isinstance(value, (int, float)) and value == value:
                    self.writer.add_scalar(_tag(key), value, step)
            self.writer.flush()

    def plot(self) -> bool:
        """Write ``curve.png`` (one :class:`Curve` for the run); False (nothing written) without matplotlib."""
        if self.curve is None:
            try:
                self.curve = Curve(f"{self.config['algo']} on {self.config['env']} (seed {self.config['seed']})")
            except ImportError:
                return False
        self.curve.draw(self.rows, self.path / "curve.png")
        return True

    def save(self, name: str, checkpoint: Dict[str, Any]) -> pathlib.Path:
        """Write ``name`` atomically (a temporary file renamed), so an interrupted save never corrupts it."""
        target = self.path / name
        temporary = target.with_suffix(".tmp")
        torch.save(checkpoint, temporary)
        os.replace(temporary, target)
        return target

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"
    return "" if value is None else value


def _tag(key: str) -> str:
    if key.startswith(("return", "length", "episodes")):
        return f"train/{key}"
    if key.startswith("eval"):
        return f"eval/{key}"
    if key in ("wall_time", "steps_per_s", "updates", "lag_mean", "lag_max", "lr"):
        return f"time/{key}"
    return f"loss/{key}"


def _tensorboard(path: pathlib.Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))
