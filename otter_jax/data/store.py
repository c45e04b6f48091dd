"""The episode store: two TFDS ArrayRecord datasets (instructions, images) under one folder, addressable by id.

Layout of a store folder:
  tfds/mimicit_images/1.0.0/...        one record per image: id, original encoded bytes, source file
  tfds/mimicit_instructions/1.0.0/...  one record per instruction: text, ids, and the *indices* of its images and
                                       in-context examples, resolved at ingestion so the loader never searches
  index/{images,instructions}_{ids,pos}.npy  sorted ids + positions, memory-mapped, for lookups by id (`inspect`, tests)
  index/queries_<dataset>.npy          indices of each dataset's query records (the train-config keys)
  index/queries_<dataset>.val.npy      held-out queries (`data build --val-fraction F`), never in the training split
  manifest.json                        datasets, groups, counts, skip report; written last = store complete
The read side goes through etils.epath (and TFDS's own file layer), so a store can sit on a bucket (gs://).
Both TFDS builders use `disable_shuffling=True`, so a record's index is its generation order; ingestion relies on
that to resolve ids to indices before writing.
"""
from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from etils import epath

MANIFEST = "manifest.json"
STORE_VERSION = 1


def _tfds():
    import tensorflow_datasets as tfds  # imported lazily: only ingestion and store reads need it

    return tfds


def _builder_class(kind: str):
    """TFDS builder for one record kind; `generate` is the example generator given at construction."""
    tfds = _tfds()
    text = tfds.features.Text
    if kind == "images":
        features = {"id": text(), "image": tfds.features.Tensor(shape=(), dtype=np.object_), "source": text()}
    else:
        features = {
            "id": text(), "dataset": text(), "group": text(), "instruction": text(), "answer": text(),
            "image_ids": tfds.features.Sequence(text()), "image_index": tfds.features.Sequence(np.int64),
            "context_ids": tfds.features.Sequence(text()), "context_index": tfds.features.Sequence(np.int64),
            "task": text(), "lang": text(), "source": text(),
        }

    def __init__(self, generate: Callable[[], Iterator] | None = None, **kwargs):
        self._generate = generate
        tfds.core.GeneratorBasedBuilder.__init__(self, file_format="array_record", **kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                     disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        if self._generate is None:
            raise RuntimeError("this builder was opened for reading; it has no generator")
        yield from self._generate()

    # TFDS derives the registered dataset name from the class name: mimicit_images / mimicit_instructions.
    name = "MimicitImages" if kind == "images" else "MimicitInstructions"
    return type(name, (tfds.core.GeneratorBasedBuilder,), {
        "VERSION": tfds.core.Version("1.0.0"), "RELEASE_NOTES": {"1.0.0": "MIMIC-IT episode store"},
        "__init__": __init__, "_info": _info, "_split_generators": _split_generators,
        "_generate_examples": _generate_examples, "__module__": __name__})


SEQUENCE_FEATURES = {"images": frozenset(),
                     "instructions": frozenset({"image_ids", "image_index", "context_ids", "context_index"})}
_BUILDERS: dict[str, type] = {}
_LOCK = threading.RLock()  # grain read threads open the store lazily and concurrently


def builder(kind: str, data_dir: str | os.PathLike, generate=None):
    """The TFDS builder of `kind` ('images' or 'instructions') in `data_dir` (= STORE/tfds)."""
    with _LOCK:
        if kind not in _BUILDERS:
            _BUILDERS[kind] = _builder_class(kind)
        return _BUILDERS[kind](generate=generate, data_dir=str(data_dir))


def write_id_index(path: Path, ids: list[str]) -> None:
    """Sorted fixed-width id array + positions, saved atomically as `<path>_ids.npy` and `<path>_pos.npy`."""
    arr = np.array([i.encode("utf-8") for i in ids], dtype=np.bytes_) if ids else np.zeros(0, "S1")
    order = np.argsort(arr, kind="stable").astype(np.int64)
    for suffix, value in (("_ids.npy", arr[order]), ("_pos.npy", order)):
        tmp = path.with_name(path.name + suffix + ".tmp.npy")
        np.save(tmp, value)
        os.replace(tmp, path.with_name(path.name + suffix))


def load_npy(path: epath.Path | Path, mmap: bool = False) -> np.ndarray:
    """np.load of a local file (memory-mapped if asked) or of a remote one (read whole)."""
    if "://" not in os.fspath(path):
        return np.load(os.fspath(path), mmap_mode="r" if mmap else None)
    return np.load(io.BytesIO(epath.Path(path).read_bytes()))


class IdIndex:
    """id -> record index by binary search over a memory-mapped sorted array (RSS stays flat in store size)."""

    def __init__(self, path: epath.Path | Path):
        self.ids = load_npy(path.with_name(path.name + "_ids.npy"), mmap=True)
        self.pos = load_npy(path.with_name(path.name + "_pos.npy"), mmap=True)

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, record_id: str) -> int | None:
        key = np.bytes_(record_id.encode("utf-8"))
        i = int(np.searchsorted(self.ids, key))
        return int(self.pos[i]) if i < len(self.ids) and self.ids[i] == key else None


class ExampleRecords:
    """A store split read as raw tf.Example bytes from its ArrayRecord files and parsed straight into
    {feature: bytes | list}, the same values TFDS returns (tests/data/test_data_ingest.py checks every record).

    Why not TFDS's own decoding: its generic per-feature numpy path costs ~0.1 ms per record, a tenth of the
    loader's per-episode budget; our features are only scalar text/bytes and 1-D sequences, whose tf.Example
    encoding (one bytes_list or int64_list per feature) is fixed."""

    def __init__(self, tfds_source, sequences: frozenset[str]):
        from tensorflow_datasets.proto import tf_example_pb2

        self._raw = tfds_source.data_source  # the array_record data source under the TFDS one
        self._parse = tf_example_pb2.Example.FromString
        self._sequences = sequences

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, index: int) -> dict:
        out = {}
        for name, feature in self._parse(self._raw[index]).features.feature.items():
            kind = feature.WhichOneof("kind")
            values = list(getattr(feature, kind).value) if kind else []
            out[name] = values if name in self._sequences else values[0]
        return out


class Store:
    """Read side of a finished store. Picklable (reopens its files lazily), so grain workers can hold it."""

    def __init__(self, path: str | os.PathLike):
        self.path = epath.Path(path)
        manifest = self.path / MANIFEST
        if not manifest.exists():
            raise FileNotFoundError(f"{self.path} is not a finished store (no {MANIFEST}); run `otter-jax data build`")
        self.manifest = json.loads(manifest.read_text())
        self._open = {}

    def __getstate__(self):
        return {"path": self.path, "manifest": self.manifest, "_open": {}}

    def _get(self, name: str):
        opened = self._open.get(name)
        if opened is not None:
            return opened
        with _LOCK:  # first access, possibly from several grain threads at once
            return self._load(name)

    def _load(self, name: str):
        if name not in self._open:
            if name in ("images", "instructions"):
                self._open[name] = ExampleRecords(self.tfds_source(name), SEQUENCE_FEATURES[name])
            else:  # "idx:images" / "idx:instructions"
                self._open[name] = IdIndex(self.path / "index" / name.split(":")[1])
        return self._open[name]

    def tfds_source(self, kind: str):
        """The TFDS data source (`tfds.data_source` API) of 'images' or 'instructions'."""
        return builder(kind, os.fspath(self.path / "tfds")).as_data_source("train")

    @property
    def images(self) -> ExampleRecords:
        """Random access to image records: {id, image, source}."""
        return self._get("images")

    @property
    def instructions(self) -> ExampleRecords:
        """Random access to instruction records (see `_builder_class` for the fields)."""
        return self._get("instructions")

    def image_index(self, image_id: str) -> int | None:
        return self._get("idx:images").get(image_id)

    def instruction_index(self, ins_id: str) -> int | None:
        return self._get("idx:instructions").get(ins_id)

    def image(self, image_id: str) -> dict:
        i = self.image_index(image_id)
        if i is None:
            raise KeyError(f"{self.path}: no image {image_id!r}")
        return self.images[i]

    def instruction(self, ins_id: str) -> dict:
        i = self.instruction_index(ins_id)
        if i is None:
            raise KeyError(f"{self.path}: no instruction {ins_id!r}")
        return self.instructions[i]

    def queries(self, dataset: str, split: str = "train") -> np.ndarray:
        """Indices (into `instructions`) of the query records of one dataset: "train", or "val" (the held-out
        queries of a store built with `--val-fraction`)."""
        if split == "val" and not self.val_fraction:
            raise ValueError(f"{self.path} has no validation split: build it with `otter-jax data build "
                             f"--val-fraction F`, or set config.data.eval_store")
        return load_npy(self.path / "index" / (f"queries_{dataset}.npy" if split == "train"
                                               else f"queries_{dataset}.{split}.npy"))

    @property
    def val_fraction(self) -> float:
        """Share of each dataset's queries held out for validation at build time (0: none)."""
        return float(self.manifest.get("val_fraction", 0.0))

    @property
    def datasets(self) -> list[dict]:
        return self.manifest["datasets"]
