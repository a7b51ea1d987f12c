"""Fixed test tasks from a CSV list: every method is evaluated on exactly these tasks.

The CSV has the columns `task, role, label, path` (any order; other columns are ignored):
one row per image of a task, `role` is `support` or `query`, `label` names the image's
class within its task (any string), `path` is the image file, relative to the CSV's folder
(absolute paths work too). Rows of one task need not be consecutive.

Checks (each error names the CSV, its row — the line number, the header is row 1 — and
the task): the columns are there and no field is empty; roles are support|query; files
exist; every task is balanced (the same number of support images per class, the same
number of query images per class, every class in both roles); all tasks have the same
way / shot / query; a task's support and query images are disjoint, by content (no image,
nor a byte copy of it, appears twice in a task); way and shot agree with the configuration's.
When the list is used (`sample_tasks`), no image of it may be a training-side image of the
dataset (`check_not_training`, by preprocessed content).

Order, as in `mnk.tasks.sampling`: tasks in order of first appearance, classes within a task in
order of first appearance (class index 0..way-1), images class-major in CSV order, so the
labels are repeat(arange(way), shot) for the support set and repeat(arange(way), query)
for the query set. Images are kept once each (`paths`, in order of first appearance) and
tasks index into them.
"""

from __future__ import annotations

import csv
import functools
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mnk.data.scan import file_sha256

if TYPE_CHECKING:
    from mnk.data.options import DataOptions

# numpy and the image loader are imported inside the functions that need them: the
# Snakefile checks a list (`task_list_shape`) from Snakemake's own environment.

COLUMNS = ("task", "role", "label", "path")
ROLES = ("support", "query")


class TaskListError(ValueError):
    """A task list that cannot be used: the message names the CSV, the row and the task."""


@dataclass(frozen=True)
class Entry:
    row: int  # line number in the CSV (the header is row 1)
    role: str
    label: str
    path: Path  # resolved


@dataclass(frozen=True)
class TaskList:
    csv_path: Path
    sha256: str  # of the CSV's bytes
    way: int
    shot: int
    query: int
    task_names: tuple[str, ...]
    paths: tuple[Path, ...] = field(repr=False)  # unique images, order of first appearance
    support: "np.ndarray" = field(repr=False)  # (n_tasks, way * shot) indices into paths
    query_ids: "np.ndarray" = field(repr=False)  # (n_tasks, way * query) indices into paths
    class_names: "np.ndarray" = field(repr=False)  # (n_tasks, way) the CSV labels, by class index
    origins: tuple[tuple[int, str], ...] = field(default=(), repr=False)  # (row, task) where each path first appears
    images: "np.ndarray | None" = field(default=None, repr=False)  # preprocessed `paths`

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def name(self) -> str:
        return self.csv_path.name

    @property
    def list_id(self) -> str:
        return list_id(self.csv_path, self.sha256)

    @property
    def task_size(self) -> int:
        return self.way * (self.shot + self.query)


def list_id(csv_path: Path, sha256: str) -> str:
    """What summary.csv shows: the file name and the first 12 hex digits of its sha256."""
    return f"{Path(csv_path).name}@{sha256[:12]}"


def _fail(csv_path, row, task, message) -> TaskListError:
    where = f"{csv_path}, row {row}" + (f", task {task!r}" if task is not None else "")
    return TaskListError(f"{where}: {message}")


def _read_rows(csv_path: Path) -> dict[str, list[Entry]]:
    """{task: [Entry]} in order of first appearance; row-level checks."""
    tasks: dict[str, list[Entry]] = defaultdict(list)
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise _fail(csv_path, 1, None, f"missing column(s) {missing}; the header must name {list(COLUMNS)}")
        reader.fieldnames = header
        for record in reader:
            row = reader.line_num
            values = {c: (record.get(c) or "").strip() for c in COLUMNS}
            task = values["task"] or None
            empty = [c for c in COLUMNS if not values[c]]
            if empty:
                raise _fail(csv_path, row, task, f"empty field(s) {empty}")
            if values["role"] not in ROLES:
                raise _fail(csv_path, row, task, f"role must be 'support' or 'query', got {values['role']!r}")
            path = Path(values["path"])
            path = (path if path.is_absolute() else csv_path.parent / path).resolve()
            if not path.is_file():
                raise _fail(csv_path, row, task, f"image file {values['path']} does not exist ({path})")
            tasks[values["task"]].append(Entry(row, values["role"], values["label"], path))
    if not tasks:
        raise _fail(csv_path, 1, None, "the list has no tasks")
    return tasks


def _task_shape(csv_path, task, entries) -> tuple[list[str], dict, int, int]:
    """(class labels in order, {(role, label): [Entry]}, shot, query) of one balanced task."""
    labels = list(dict.fromkeys(e.label for e in entries))
    groups = defaultdict(list)
    seen: dict[str, Entry] = {}  # by content: a byte copy is the same image under another name
    for e in entries:
        digest = file_sha256(e.path)
        if digest in seen:
            first = seen[digest]
            what = "both support and query" if first.role != e.role else f"twice in the {e.role} set"
            copy = "" if first.path == e.path else f" (a byte copy of {first.path.name})"
            raise _fail(csv_path, e.row, task, f"image {e.path.name}{copy} is {what} (also row {first.row}); "
                        "a task's support and query images must be disjoint")
        seen[digest] = e
        groups[e.role, e.label].append(e)
    counts = {}
    for role in ROLES:
        per_label = {label: len(groups.get((role, label), ())) for label in labels}
        if len(set(per_label.values())) != 1 or 0 in per_label.values():
            detail = ", ".join(f"{label}: {n}" for label, n in list(per_label.items())[:10])
            detail += ", ..." if len(per_label) > 10 else ""
            row = min(e.row for e in entries)
            raise _fail(csv_path, row, task, f"unbalanced task: {role} images per class {{{detail}}}; "
                        f"every class needs the same number of {role} images (at least one)")
        counts[role] = next(iter(per_label.values()))
    return labels, groups, counts["support"], counts["query"]


def _check_shape(csv_path, shape: dict, wanted: dict) -> None:
    for key, value in wanted.items():
        if value is not None and shape[key] != value:
            raise TaskListError(f"{csv_path}: the task list is {shape[key]}-{key} "
                                f"(way {shape['way']}, shot {shape['shot']}, query {shape['query']}) "
                                f"but the configuration's tasks.{key} is {value}")


def _checked_tasks(csv_path: Path, way, shot, query):
    """(sha256, shape {way, shot, query}, [(task, labels, groups)]): every check, no numpy."""
    if not csv_path.is_file():
        raise TaskListError(f"task list {csv_path} does not exist (tasks.test_tasks)")
    sha256 = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    shape, checked = None, []
    for task, entries in _read_rows(csv_path).items():
        labels, groups, n_shot, n_query = _task_shape(csv_path, task, entries)
        this = {"way": len(labels), "shot": n_shot, "query": n_query}
        if shape is None:
            shape, first_task = this, task
        elif this != shape:
            raise _fail(csv_path, entries[0].row, task, f"is {this} but task {first_task!r} is {shape}; "
                        "all tasks must have the same way, shot and query")
        checked.append((task, labels, groups))
    _check_shape(csv_path, shape, {"way": way, "shot": shot, "query": query})
    return sha256, shape, checked


def task_list_shape(csv_path, *, way: int | None = None, shot: int | None = None) -> dict:
    """{n_tasks, way, shot, query, task_size, list_id} of a checked list (for planning a DAG).

    Read once per version of the file (cached by path, size and mtime): the Snakefile asks
    for it while checking the config and while planning the pools."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise TaskListError(f"task list {csv_path} does not exist (tasks.test_tasks)")
    stat = csv_path.stat()
    shape = dict(_list_shape(csv_path.resolve(), stat.st_size, stat.st_mtime_ns))
    _check_shape(csv_path, shape, {"way": way, "shot": shot})
    return shape


@functools.lru_cache(maxsize=8)
def _list_shape(csv_path: Path, size: int, mtime_ns: int) -> tuple:
    sha256, shape, checked = _checked_tasks(csv_path, None, None, None)
    return tuple({"n_tasks": len(checked), **shape, "task_size": shape["way"] * (shape["shot"] + shape["query"]),
                  "list_id": list_id(csv_path, sha256)}.items())


def parse_task_list(csv_path, *, way: int | None = None, shot: int | None = None,
                    query: int | None = None) -> TaskList:
    """Validate a task list and index its tasks (no image is decoded)."""
    import numpy as np

    csv_path = Path(csv_path)
    sha256, shape, checked = _checked_tasks(csv_path, way, shot, query)
    index: dict[Path, int] = {}
    origins: dict[Path, tuple[int, str]] = {}  # each image's first row
    for task, _, groups in checked:
        for e in (e for entries in groups.values() for e in entries):
            if e.path not in origins or e.row < origins[e.path][0]:
                origins[e.path] = (e.row, task)
    ids = {role: [[index.setdefault(e.path, len(index)) for label in labels for e in groups[role, label]]
                  for _, labels, groups in checked] for role in ROLES}
    return TaskList(csv_path, sha256, shape["way"], shape["shot"], shape["query"],
                    tuple(task for task, _, _ in checked), tuple(index),
                    np.asarray(ids["support"], np.int64), np.asarray(ids["query"], np.int64),
                    np.asarray([labels for _, labels, _ in checked]), tuple(origins[path] for path in index))


def read_task_list(csv_path, options, *, way: int | None = None, shot: int | None = None,
                   query: int | None = None, progress: bool = False) -> TaskList:
    """`parse_task_list` plus the list's images, preprocessed like the dataset's
    (`options`: the dataset's ImageOptions, `ImageOptions.omniglot(...)` for Omniglot)."""
    from mnk.data.folder import load_images

    tasks = parse_task_list(csv_path, way=way, shot=shot, query=query)
    names = [str(p) for p in tasks.paths]
    return replace(tasks, images=load_images(tasks.paths, options, names, progress, desc="task list"))


def layout_test_tasks(tasks: TaskList, offset: int):
    """The list's tasks in the layout of `mnk.tasks.sampling.make_tasks`' test tasks.

    Returns (order, arrays): `order` indexes `tasks.paths` / `tasks.images` and lists each
    task's images consecutively (support, then query: `task_size` per task; an image in
    several tasks appears once per task), to be appended to the experiment's local image
    list after its `offset` training images; arrays: test_support, test_query and their
    labels, as local ids.
    """
    import numpy as np

    order = np.concatenate([tasks.support, tasks.query_ids], axis=1).reshape(-1)
    n, ns = tasks.n_tasks, tasks.way * tasks.shot
    local = offset + np.arange(n * tasks.task_size).reshape(n, tasks.task_size)
    arrays = {
        "test_support": local[:, :ns],
        "test_query": local[:, ns:],
        "test_support_labels": np.tile(np.repeat(np.arange(tasks.way), tasks.shot), (n, 1)),
        "test_query_labels": np.tile(np.repeat(np.arange(tasks.way), tasks.query), (n, 1)),
    }
    return order.astype(np.int64), arrays


# ------------------------------------------------ the classic Omniglot one-shot list


def write_task_list(csv_path, rows) -> Path:
    """Write rows of (task, role, label, path) as a task-list CSV."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return csv_path


def write_omniglot_one_shot_list(archive, out_dir, *, n_tasks: int = 20, way: int = 20,
                                 alphabet: str | None = None, seed: int = 0) -> Path:
    """Lake et al.'s one-shot protocol from `images_evaluation.zip`: each task takes `way`
    characters of ONE alphabet (`alphabet`, or a random one with enough characters per
    task), one support image each from one drawer and one query image each from another.

    Writes the images used to out_dir/images/<alphabet>/<character>/<file> and the list
    to out_dir/tasks.csv (returned). Deterministic for a given seed.
    """
    import numpy as np

    from mnk.data.archive import iter_archive_pngs

    by_character: dict[tuple[str, str], dict[int, tuple[str, bytes]]] = defaultdict(dict)
    for alpha, character, file_name, payload in iter_archive_pngs(archive):
        drawer = int(Path(file_name).stem.split("_")[1])
        by_character[alpha, character][drawer] = (file_name, payload)
    alphabets = defaultdict(list)
    for alpha, character in by_character:
        alphabets[alpha].append(character)
    eligible = sorted(a for a, chars in alphabets.items() if len(chars) >= way)
    if alphabet is not None and alphabet not in eligible:
        raise ValueError(f"alphabet {alphabet!r} is not in {archive} with >= {way} characters; "
                         f"choose one of {eligible}")
    rng = np.random.default_rng([seed, way, n_tasks])
    out_dir, rows = Path(out_dir), []
    for t in range(n_tasks):
        alpha = alphabet or eligible[rng.integers(len(eligible))]
        characters = rng.choice(sorted(alphabets[alpha]), way, replace=False)
        drawers = sorted(set.intersection(*(set(by_character[alpha, c]) for c in characters)))
        pair = rng.choice(drawers, 2, replace=False)
        for role, drawer in zip(ROLES, pair):
            for character in characters:
                file_name, payload = by_character[alpha, character][int(drawer)]
                rel = Path("images", alpha, character, file_name)
                (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                (out_dir / rel).write_bytes(payload)
                rows.append((f"run{t + 1:02d}", role, character, rel.as_posix()))
    return write_task_list(out_dir / "tasks.csv", rows)


def list_tasks_id(task_list: TaskList) -> str:
    """`test_tasks_id` of a list's tasks. Its images are not in the dataset (no global ids
    to hash, as `mnk.tasks.sampling.test_tasks_id` does), so it hashes the list's identity (the CSV's
    sha256) and the task layout (each task's support and query image indices into the list)."""
    import numpy as np

    digest = hashlib.sha256(task_list.sha256.encode())
    digest.update(np.ascontiguousarray(np.concatenate([task_list.support, task_list.query_ids], axis=1),
                                       dtype=np.int64).tobytes())
    return digest.hexdigest()[:12]


def replace_test_tasks(tasks: dict, task_list: TaskList):
    """An experiment's or a pool's tasks (the `mnk.tasks.sampling.make_tasks` arrays) with the test
    tasks replaced by the list's. Returns (tasks, order): the local image list is the
    training and validation images followed by `task_list.images[order]` (`local_images`).
    Training and validation tasks are untouched. The list's images get the ids
    -1 - (index into `task_list.paths`): negative (not in the dataset), distinct per image,
    so that pool and experiment files can still be compared id by id.
    """
    import numpy as np

    offset = int(tasks["n_train_images"]) + int(tasks["n_val_images"])
    order, arrays = layout_test_tasks(task_list, offset)
    out = {**tasks, **arrays}
    out["image_ids"] = np.r_[np.asarray(tasks["image_ids"])[:offset], -1 - order].astype(np.int64)
    out["test_characters"] = np.zeros(0, np.int64)
    out["test_task_characters"] = np.full((task_list.n_tasks, task_list.way), -1, np.int64)
    out["test_task_labels"] = task_list.class_names  # the CSV's labels, by class index
    out["test_tasks_id"] = np.asarray(list_tasks_id(task_list))
    out["test_tasks_list"] = np.asarray(task_list.list_id)
    return out, order


def local_images(images, tasks: dict, task_list: TaskList | None = None):
    """The images of a tasks file's local image list: dataset images by `image_ids`, the
    list's (negative ids, see `replace_test_tasks`) from `task_list.images`."""
    import numpy as np

    ids = np.asarray(tasks["image_ids"])
    if task_list is None:
        return images[ids]
    listed = ids < 0
    if listed.any() and images.shape[1:] != task_list.images.shape[1:]:
        raise ValueError(f"{task_list.csv_path}: the list's images are {task_list.images.shape[1:]}, "
                         f"the dataset's {images.shape[1:]}")
    out = np.empty((len(ids), *images.shape[1:]), dtype=images.dtype)
    out[~listed] = images[ids[~listed]]
    out[listed] = task_list.images[-1 - ids[listed]]
    return out


def load_for_dataset(csv_path, data: "DataOptions", dataset_images, *, way=None, shot=None, query=None) -> TaskList:
    """The list with its images, preprocessed like the dataset's (`data`: the data section),
    with the dataset's channel count."""
    channels = 1 if dataset_images.ndim == 3 else dataset_images.shape[1]
    options = replace(data.image, channels=channels)
    return read_task_list(csv_path, options, way=way, shot=shot, query=query)


def _pixels_digest(image) -> bytes:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()


def check_not_training(task_list: TaskList, data: dict, split_name: str) -> None:
    """Refuse a list whose images are training-side images of the dataset (`data`, the
    preprocessed arrays; `split_name`: tasks.split). Compared by content, preprocessed alike:
    the dataset's own file by any path or link, or a copy of it, gives the same pixels."""
    import numpy as np

    from mnk.tasks.sampling import character_pools

    train_characters, _ = character_pools(data["character"], data["split"], split_name)
    training = {_pixels_digest(data["images"][k]): k
                for k in np.flatnonzero(np.isin(data["character"], train_characters))}
    leaked = [(i, training[digest]) for i, image in enumerate(task_list.images)
              if (digest := _pixels_digest(image)) in training]
    if leaked:
        (i, k), (row, task) = leaked[0], task_list.origins[leaked[0][0]]
        name = data["character_names"][data["character"][k]]
        raise _fail(task_list.csv_path, row, task,
                    f"image {task_list.paths[i]} is a training image of the dataset (the pixels of its image {k}, "
                    f"class {name}, on the training side of tasks.split {split_name!r}); {len(leaked)} of the "
                    "list's images are: test tasks must not hold training images")


def sample_tasks(data: dict, spec, test_tasks: dict, data_options: "DataOptions", log):
    """make_pool's and make_tasks' one step: `mnk.tasks.sampling.make_tasks` on the preprocessed
    dataset `data`, with the list's test tasks in place of the sampled ones under
    `tasks.test_tasks` (`test_tasks` params; empty: none). Returns (tasks, the images of their
    local image list)."""
    from mnk.tasks.sampling import make_tasks

    tasks = make_tasks(data["character"], data["drawer"], data["split"], spec)
    task_list = None
    if test_tasks:
        task_list = load_for_dataset(test_tasks["path"], data_options, data["images"],
                                     way=spec.way, shot=spec.shot, query=spec.query)
        check_not_training(task_list, data, spec.split)
        tasks, _ = replace_test_tasks(tasks, task_list)
        log.info("test tasks: the %d of the list %s; tasks.n_test_tasks is ignored", task_list.n_tasks,
                 task_list.list_id)
    return tasks, local_images(data["images"], tasks, task_list)
