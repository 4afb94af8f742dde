"""Mouth opening of real faces from mediapipe's legacy face mesh (optional ``eval-face`` extra).

mediapipe 0.10.x ships the face-detection and face-mesh weights inside its wheel, so this works
offline. Per frame: the full-range face detector finds faces (it also finds faces a tenth of the frame
high, which the mesh's own short-range detector misses); the largest is cropped with a margin of half
its size on each side and upscaled to 256 pixels; the 468-point mesh runs on the crop. The mouth opening
is the gap between the inner lips (landmarks 13 and 14) divided by the mouth width (corners 61 and 291):
a ratio independent of the face's size in the frame. mediapipe is imported on first use only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MissingDependencyError", "FaceMouth", "FaceMeshMouth"]

_UPPER_LIP, _LOWER_LIP, _LEFT_CORNER, _RIGHT_CORNER = 13, 14, 61, 291
_CROP_SIZE = 256
_INSTALL_HINT = "pip install 'magihuman[eval-face]' (mediapipe 0.10.x, e.g. mediapipe==0.10.14)"


class MissingDependencyError(RuntimeError):
    """An optional dependency of the evaluation kit is not installed (the message says how to install it)."""


@dataclass(frozen=True)
class FaceMouth:
    """One face found in an image.

    Attributes:
        face_box: ``(x0, y0, x1, y1)`` pixels of the detected face.
        mouth_box: ``(x0, y0, x1, y1)`` pixels spanned by the lip landmarks.
        opening: inner-lip gap / mouth width (0 closed; about 0.3-0.6 wide open).
        landmarks: ``float32 [468, 2]`` mesh points in image pixels.
    """

    face_box: tuple[float, float, float, float]
    mouth_box: tuple[float, float, float, float]
    opening: float
    landmarks: np.ndarray


def _mediapipe():
    try:
        import mediapipe as mp
    except ImportError as exc:
        raise MissingDependencyError(f"measuring real mouths needs mediapipe: {_INSTALL_HINT} ({exc})") from exc
    if not hasattr(mp, "solutions"):
        raise MissingDependencyError(f"this mediapipe has no legacy face mesh (mp.solutions): {_INSTALL_HINT}")
    return mp


class FaceMeshMouth:
    """Mouth opening per frame (NaN where no face is found). Use as a context manager or call :meth:`close`.

    Args:
        min_detection_confidence: face detector threshold (0-1).

    Raises:
        MissingDependencyError: mediapipe 0.10.x is not installed.
    """

    def __init__(self, *, min_detection_confidence: float = 0.3):
        mp = _mediapipe()
        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_detection_confidence)
        self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                     refine_landmarks=False)

    def __enter__(self) -> FaceMeshMouth:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the mediapipe graphs."""
        self._detector.close()
        self._mesh.close()

    def find(self, image: np.ndarray) -> FaceMouth | None:
        """The largest face in ``image`` (``uint8 [H, W, 3]`` RGB) on which the mesh fits, or None.

        Faces are tried from the largest down: the mesh does not fit a face seen in profile or looking down.
        """
        image = np.ascontiguousarray(image, dtype=np.uint8)
        height, width = image.shape[:2]
        detections = self._detector.process(image).detections or []
        boxes = sorted((d.location_data.relative_bounding_box for d in detections),
                       key=lambda b: b.width * b.height, reverse=True)
        for box in boxes:
            face_box = (box.xmin * width, box.ymin * height, (box.xmin + box.width) * width,
                        (box.ymin + box.height) * height)
            points = self._mesh_points(image, face_box)
            if points is None:
                continue
            lips = points[[_UPPER_LIP, _LOWER_LIP, _LEFT_CORNER, _RIGHT_CORNER]]
            gap = float(np.linalg.norm(points[_UPPER_LIP] - points[_LOWER_LIP]))
            mouth_width = float(np.linalg.norm(points[_LEFT_CORNER] - points[_RIGHT_CORNER]))
            return FaceMouth(face_box, (*lips.min(axis=0).tolist(), *lips.max(axis=0).tolist()),
                             gap / mouth_width if mouth_width > 0 else float("nan"), points)
        return None

    def _mesh_points(self, image: np.ndarray, face_box: tuple[float, float, float, float]) -> np.ndarray | None:
        """Mesh landmarks (image pixels) of the face in ``face_box``, from an upscaled crop; None if it fails."""
        from PIL import Image

        x0, y0, x1, y1 = face_box
        side = 2.0 * max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        crop_box = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
        crop = Image.fromarray(image).crop(crop_box).resize((_CROP_SIZE, _CROP_SIZE), Image.BILINEAR)
        result = self._mesh.process(np.asarray(crop))
        if not result.multi_face_landmarks:
            return None
        scale = (crop_box[2] - crop_box[0]) / _CROP_SIZE
        return np.array([(p.x * _CROP_SIZE * scale + crop_box[0], p.y * _CROP_SIZE * scale + crop_box[1])
                         for p in result.multi_face_landmarks[0].landmark], dtype=np.float32)

    def mouth_opening(self, frames: np.ndarray) -> np.ndarray:
        """``float32 [F]`` opening per frame of ``uint8 [F, H, W, 3]``; NaN where no face is found."""
        out = np.full(len(frames), np.nan, dtype=np.float32)
        for i, frame in enumerate(frames):
            face = self.find(frame)
            if face is not None:
                out[i] = face.opening
        return out
