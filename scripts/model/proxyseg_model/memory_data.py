"""Sequences for the bundled model's memory mode (issue 15 item 3), with the frozen parts cached.

Three kinds of sequence, each with a fixed support set:
  real      a real still moved by `sequences.make_sequence` (probe motion, speckle for
            ultrasound, gain and contrast drift). Training: the 16 training-pool cases of each
            data set (realdata.split, seed 0), sequence seeds 1000 + case index, support = the
            first 5 training-pool cases less the case itself. Held out: the first validation
            cases, sequence seed = case index, support = the first 5 training-pool cases
            (exactly `evaluate_sequences`); validation cases are never trained on.
  us-cine   the ultrasound phantom's cine loop (probe drift and rotation, decorrelating speckle);
            training seeds 20000+, held-out seeds 7000+, support = single frames of seeds 9000-9004.
  mr-volume the MR phantom's volume (slices through the gland); same seed ranges.

LiteMedSAM and the PPG are frozen, so per frame the image encoder's embeddings (fp16) and the
PPG's prompt tokens are computed once through the bundle's own graphs (ONNX Runtime) and cached
in runs/memory-cache/<split>-<kind>.pt, with the model inputs (fp16, which the decoder's detail
branch reads) and the truth masks (256 x 256 model grid; held-out sequences also keep the
native-resolution truth that the evaluation scores).

  python -m proxyseg_model.memory_data --bundle ../../models/litemedsam-ppg
  python -m proxyseg_model.memory_data --bundle ../../models/litemedsam-ppg --splits train --attach-images
  python -m proxyseg_model.memory_data --bundle /tmp/cand --cache runs/memory-cache-cand \
      --prompts-from runs/memory-cache      # a candidate PPG: its own tokens, the same embeddings
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from . import realdata
from .phantoms import mr, ultrasound
from .preprocess import case_displays, prepare_image, prepare_mask
from .runtime import OrtBundle
from .sequences import make_sequence

RUNS = Path(__file__).resolve().parent.parent / "runs"
CACHE = RUNS / "memory-cache"
FRAMES = 8
VAL_REAL_CASES = realdata.MEMORY_CASES  # held-out real sequences per data set (DRIVE has 4 validation cases)
VAL_PHANTOMS = 16  # held-out phantom sequences per kind
N_SUPPORT = 5
PHANTOM_SUPPORT_SEEDS = range(9000, 9005)
PHANTOM_SEEDS = {"train": 20000, "val": 7000}
REAL_TRAIN_SEED = 1000
KINDS = ("real", "us-cine", "mr-volume")


def phantom_case(kind: str, seed: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A phantom sequence -> display frames F x H x W x 3, masks F x K x H x W."""
    case = ultrasound.generate(seed, frames=frames) if kind == "us-cine" else mr.generate(seed, slices=frames)
    return case_displays(case), case["masks"]


def phantom_support(kind: str) -> tuple[list, list]:
    """The phantom support set: single frames of fixed seeds (displays, masks)."""
    pairs = [phantom_case(kind, s, 1) for s in PHANTOM_SUPPORT_SEEDS]
    return [d[0] for d, _ in pairs], [m[0] for _, m in pairs]


def sequences(kind: str, split: str, count: int = 0, frames: int = FRAMES):
    """Yields (group, name, labels, displays F x H x W x 3, masks F x K x H x W, support key) for a
    kind and split ("train" or "val"); `count` limits the sequences per group (0 = all; phantoms
    default to 16 for training, VAL_PHANTOMS held out)."""
    if kind == "real":
        for ds, spec in realdata.DATASETS.items():
            train, val = realdata.split(ds)
            names = train if split == "train" else val
            for i, case in enumerate(names[:count or len(names)]):
                display, masks = realdata.load_case(ds, case)
                seed = REAL_TRAIN_SEED + i if split == "train" else i
                seq, truth = make_sequence(display, masks, frames, seed=seed, ultrasound=spec.modality == "US")
                yield ds, case, list(spec.labels), seq, truth, support_key(split, ds, case)
        return
    n = count or (16 if split == "train" else VAL_PHANTOMS)
    labels = ["pubic symphysis", "fetal head"] if kind == "us-cine" else ["prostate"]
    for i in range(n):
        seed = PHANTOM_SEEDS[split] + i
        d, m = phantom_case(kind, seed, frames)
        yield kind, f"seed{seed}", labels, d, m, support_key(split, kind, f"seed{seed}")


def support_key(split: str, group: str, name: str) -> tuple:
    """The support set of a sequence (SupportContexts): a training sequence of a real case
    leaves its own case out of its set's support pairs; the others use the set's first pairs."""
    return (group, name if split == "train" and group in realdata.DATASETS else None)


class SupportContexts:
    """Support contexts (ONNX Runtime), one per (set, left-out case)."""

    def __init__(self, bundle: OrtBundle):
        self.bundle = bundle
        self.memo = {}

    @staticmethod
    def pairs(key) -> tuple[list, list]:
        """The support pairs of a key (group, left-out case): displays, masks K x H x W."""
        group, leave_out = key
        if group in realdata.DATASETS:
            names = [c for c in realdata.split(group)[0][:N_SUPPORT + 1] if c != leave_out][:N_SUPPORT]
            pairs = [realdata.load_case(group, c) for c in names]
            return [d for d, _ in pairs], [m for _, m in pairs]
        return phantom_support(group)

    def get(self, key) -> dict:
        if key not in self.memo:
            self.memo[key] = self.bundle.support_context(*self.bundle.prepare_pairs(*self.pairs(key)))
        return self.memo[key]


def cache_sequence(bundle: OrtBundle, ctx: dict, displays: np.ndarray, masks: np.ndarray, keep_truth: bool) -> dict:
    """Embeddings, prompt tokens and model-grid masks of every frame of one sequence."""
    embs, prompts, grid, images = [], [], [], []
    hw = None
    for d, m in zip(displays, masks):
        img, hw = prepare_image(d, bundle.S, bundle.mean, bundle.std)
        emb = bundle.encode(img[None])
        tok = bundle.prompt_tokens(emb, ctx)
        embs.append(torch.from_numpy(emb[0]).half())
        prompts.append(torch.from_numpy(tok))
        grid.append(torch.from_numpy(np.stack([prepare_mask(x, bundle.S) for x in m])).bool())
        images.append(torch.from_numpy(img).half())
    out = {"emb": torch.stack(embs), "prompts": torch.stack(prompts), "masks": torch.stack(grid),
           "images": torch.stack(images), "resized_hw": hw, "orig_hw": tuple(displays.shape[1:3])}
    if keep_truth:
        out["truth"] = torch.from_numpy(masks.astype(np.uint8))
    return out


def build_cache(bundle_dir: Path, split: str, kind: str, count: int = 0, out: Path = CACHE) -> Path:
    """Caches one (split, kind) -> runs/memory-cache/<split>-<kind>.pt (a list of sequences).
    An existing cache is used only if this bundle's graphs made it (`check_cache`)."""
    path = out / f"{split}-{kind}.pt"
    if path.exists():
        check_cache(bundle_dir, split, kind, count, out)
        return path
    bundle = OrtBundle(bundle_dir)
    ctxs = SupportContexts(bundle)
    seqs, t0 = [], time.time()
    for group, name, labels, d, m, key in sequences(kind, split, count):
        item = cache_sequence(bundle, ctxs.get(key), d, m, keep_truth=split == "val")
        item.update({"group": group, "name": name, "labels": labels})
        seqs.append(item)
        print(f"{split}-{kind}: {group}/{name} ({len(seqs)}) {time.time() - t0:.0f}s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(seqs, path)
    return path


# fp16 embeddings of a regenerated frame vs the cached ones (the encoder run twice on the same input)
EMBEDDING_TOL = 1e-2


def attach_images(bundle_dir: Path, kind: str, out: Path = CACHE, count: int = 0) -> int:
    """Adds the model inputs ("images") to a training cache built before caches kept them (the
    detail branch of the mask decoder reads the image, so train_memory needs it). The sequences
    are seeded, so they are made again (`sequences`) rather than re-encoded; the first frame of
    every sequence is encoded once more and must match the cached embeddings, or nothing is
    written. `count`: as the cache was built with (`build_cache`). Returns the number of
    sequences given images (0: the cache had them already)."""
    path = out / f"train-{kind}.pt"
    seqs = torch.load(path, weights_only=False)
    if all("images" in s for s in seqs):
        return 0
    bundle = OrtBundle(bundle_dir)
    made = sequences(kind, "train", count)  # one at a time: 64 real sequences at full size are GBs
    stale = f"{path}: its sequences are not the ones memory_data makes today; rebuild it (delete the file)"
    for seq in seqs:
        group, name, _, displays, _, _ = next(made, (None,) * 6)
        if (group, name) != (seq["group"], seq["name"]):
            raise SystemExit(stale)
        imgs = [prepare_image(d, bundle.S, bundle.mean, bundle.std)[0] for d in displays]
        emb = bundle.encode(imgs[0][None])[0]
        diff = float(np.abs(emb - seq["emb"][0].float().numpy()).max())
        if diff > EMBEDDING_TOL:
            raise SystemExit(f"{path}: {group}/{name} frame 0 encodes to embeddings {diff:.3g} away from the cached "
                             f"ones (> {EMBEDDING_TOL}); the sequence generator changed, rebuild the cache")
        seq["images"] = torch.from_numpy(np.stack(imgs)).half()
    if next(made, None) is not None:
        raise SystemExit(stale)
    tmp = path.with_suffix(".tmp")
    torch.save(seqs, tmp)
    tmp.replace(path)
    return len(seqs)


# prompt tokens of the same frame through the same graphs (ONNX Runtime, fp32; cached in fp32)
PROMPT_TOL = 1e-3


def first_sequence(path: Path, seqs: list, kind: str, split: str, count: int) -> tuple:
    """The first sequence memory_data makes today for (split, kind), (group, name, displays, masks,
    support key); a cache whose first sequence is another is refused."""
    group, name, _, displays, masks, key = next(sequences(kind, split, count))
    if not seqs or (group, name) != (seqs[0]["group"], seqs[0]["name"]):
        raise SystemExit(f"{path}: its sequences are not the ones memory_data makes today; delete it to rebuild it")
    return group, name, displays, masks, key


def check_cache(bundle_dir: Path, split: str, kind: str, count: int = 0, out: Path = CACHE) -> None:
    """Refuses a cache that this bundle's graphs did not make: the cache names no bundle, and one
    built through another PPG (a candidate, the release before) would score a bundle with the
    other's prompt tokens. The first frame of the first sequence is made and run through the
    image encoder, support encoder and prompt generator again; its embeddings and prompt tokens
    must match the cached ones (EMBEDDING_TOL, PROMPT_TOL)."""
    path = out / f"{split}-{kind}.pt"
    seqs = torch.load(path, weights_only=False, mmap=True)
    group, name, displays, masks, key = first_sequence(path, seqs, kind, split, count)
    bundle = OrtBundle(bundle_dir)
    again = cache_sequence(bundle, SupportContexts(bundle).get(key), displays[:1], masks[:1], keep_truth=False)
    d_emb = float((again["emb"][0].float() - seqs[0]["emb"][0].float()).abs().max())
    d_tok = float((again["prompts"][0].float() - seqs[0]["prompts"][0].float()).abs().max())
    if d_emb > EMBEDDING_TOL or d_tok > PROMPT_TOL:
        raise SystemExit(f"{path} was not made by {bundle_dir}'s graphs (frame 0 of {group}/{name}: embeddings "
                         f"{d_emb:.3g}, prompt tokens {d_tok:.3g} from the cached ones): delete it to rebuild it "
                         "for this bundle, or give this bundle its own cache folder (--cache)")


def reprompt(bundle_dir: Path, split: str, kind: str, source: Path, count: int = 0, out: Path = CACHE) -> Path:
    """Makes out/<split>-<kind>.pt from another bundle's cache of the same sequences, with this
    bundle's prompt tokens. Only the PPG's tokens depend on the PPG: the embeddings, model inputs
    and masks are the frozen encoder's and the sequence generator's, so the slow part of
    `build_cache` (making every frame and encoding it, ~2 s a frame here) is skipped and only the
    prompt generator runs (~40 ms a frame). The first frame of the first sequence is made and
    encoded again first: the source must hold the sequences memory_data makes today, encoded by
    this bundle's image encoder. The tokens come from the cached fp16 embeddings (measured
    within 3.4e-4 of tokens from fp32 ones, under PROMPT_TOL), and the result must then pass
    `check_cache` as a built cache does."""
    path = out / f"{split}-{kind}.pt"
    if path.exists():
        check_cache(bundle_dir, split, kind, count, out)
        return path
    src = source / f"{split}-{kind}.pt"
    if src.resolve() == path.resolve():
        raise SystemExit(f"--prompts-from {source}: the same folder as --cache")
    if not src.exists():
        raise SystemExit(f"--prompts-from {source}: no {src.name} there to take the embeddings from")
    seqs = torch.load(src, weights_only=False)
    group, name, displays, _, _ = first_sequence(src, seqs, kind, split, count)
    bundle = OrtBundle(bundle_dir)
    img, _ = prepare_image(displays[0], bundle.S, bundle.mean, bundle.std)
    diff = float(np.abs(bundle.encode(img[None])[0] - seqs[0]["emb"][0].float().numpy()).max())
    if diff > EMBEDDING_TOL:
        raise SystemExit(f"{src}: frame 0 of {group}/{name} encodes to embeddings {diff:.3g} away from the cached "
                         f"ones (> {EMBEDDING_TOL}) through {bundle_dir}'s image encoder: build the cache instead")
    ctxs, t0 = SupportContexts(bundle), time.time()
    for i, seq in enumerate(seqs):
        ctx = ctxs.get(support_key(split, seq["group"], seq["name"]))
        seq["prompts"] = torch.stack([torch.from_numpy(bundle.prompt_tokens(e[None].float().numpy(), ctx))
                                      for e in seq["emb"]])
        print(f"{split}-{kind}: {seq['group']}/{seq['name']} re-prompted ({i + 1}) {time.time() - t0:.0f}s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(seqs, tmp)
    tmp.replace(path)
    check_cache(bundle_dir, split, kind, count, out)
    return path


def load(split: str, kind: str, out: Path = CACHE) -> list:
    return torch.load(out / f"{split}-{kind}.pt", weights_only=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--splits", nargs="+", default=["train", "val"])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    ap.add_argument("--val-cases", type=int, default=VAL_REAL_CASES, help="held-out real sequences per data set")
    ap.add_argument("--val-phantoms", type=int, default=VAL_PHANTOMS, help="held-out phantom sequences per kind")
    ap.add_argument("--attach-images", action="store_true",
                    help="add the model inputs to existing training caches that lack them (no re-encoding)")
    ap.add_argument("--cache", type=Path, default=CACHE,
                    help="cache folder (one per bundle: a cache another bundle's graphs made is refused)")
    ap.add_argument("--prompts-from", type=Path,
                    help="a cache folder another bundle (same image encoder) made: reuse its embeddings and "
                         "run only this bundle's prompt generator (reprompt)")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    if a.prompts_from and a.attach_images:
        raise SystemExit("--prompts-from and --attach-images exclude each other")
    if a.attach_images:
        for kind in a.kinds:
            print(f"train-{kind}: images attached to {attach_images(a.bundle, kind, a.cache)} sequences", flush=True)
        return
    for split in a.splits:
        for kind in a.kinds:
            count = 0 if split == "train" else (a.val_cases if kind == "real" else a.val_phantoms)
            if a.prompts_from:
                reprompt(a.bundle, split, kind, a.prompts_from, count, a.cache)
            else:
                build_cache(a.bundle, split, kind, count, a.cache)


if __name__ == "__main__":
    main()
