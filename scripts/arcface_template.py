"""Where dlib's 5 landmarks sit in ArcFace's 112x112 frame: ``reid.face.insightface_mbf.DLIB5_IN_ARCFACE``.

For each photo of a face folder (CelebA's training identities; never LFW), the largest face's dlib 5 points
and ArcFace's 5 points (eye centres, nose tip, mouth corners, read off dlib's 68-point model) are found; the
similarity taking ArcFace's points to ArcFace's template maps dlib's points into the template's frame, and the
median over the photos is printed. The 68-point model is needed here only, never at run time.

Examples:
    python scripts/arcface_template.py ../shared/data/celeba-faces
    python scripts/arcface_template.py ../shared/data/celeba-faces --photos 500 --seed 1
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reid.face import FaceDetector, dlib_model_path
from reid.face.insightface_mbf import ARCFACE_5, similarity
from reid.images import to_rgb_array


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="identity folders of face photos (root/<person>/<image>)")
    ap.add_argument("--photos", type=int, default=1500, help="how many photos (a seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import dlib

    files = sorted(Path(args.folder).glob("*/*.jpg"))
    if not files:
        sys.exit(f"error: {args.folder}: no <person>/<image>.jpg files")
    random.Random(args.seed).shuffle(files)
    detector = FaceDetector()
    shape68 = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
    mapped = []
    for path in tqdm(files[: args.photos], desc="photos"):
        img = to_rgb_array(str(path), where=str(path))
        faces = detector.detect(img)
        face = faces[0] if faces else detector.center_face(img)  # CelebA's crops are centred faces
        s = shape68(img, dlib.rectangle(*face.box))
        p = np.array([[s.part(i).x, s.part(i).y] for i in range(68)], np.float64)
        arc = np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])
        m = similarity(arc, ARCFACE_5)
        mapped.append(face.landmarks @ m[:, :2].T + m[:, 2])
    mapped = np.array(mapped)
    print(
        f"{len(mapped)} photos of {args.folder}; dlib's 5 points in ArcFace's 112x112 frame (median, and sd):"
    )
    for i, (med, sd) in enumerate(zip(np.median(mapped, 0), mapped.std(0))):
        print(f"  point {i}: [{med[0]:.4f}, {med[1]:.4f}]   sd [{sd[0]:.2f}, {sd[1]:.2f}]")


if __name__ == "__main__":
    main()
