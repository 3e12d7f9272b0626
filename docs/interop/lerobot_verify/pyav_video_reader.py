"""A stand-in for ``torchvision.io.VideoReader`` (gone from torchvision 0.29) built on PyAV, so that
lerobot 0.4.4's own ``decode_video_frames_torchvision`` (its seek, frame selection and tolerance
check) runs unchanged with ``video_backend="pyav"``. Only what that function uses is provided:
``seek(ts, keyframes_only)``, iteration yielding ``{"data": uint8 (C,H,W) tensor, "pts": seconds}``
and ``.container``.
"""

import av
import torch
import torchvision


class PyAVVideoReader:
    def __init__(self, path: str, stream: str = "video") -> None:
        self.container = av.open(str(path))
        self.stream = self.container.streams.video[0]
        self._start = 0.0

    def seek(self, ts: float, keyframes_only: bool = True) -> "PyAVVideoReader":
        # backward to the key frame at or before ts (PyAV, like torchvision's pyav backend)
        self.container.seek(int(ts / self.stream.time_base), stream=self.stream, backward=True)
        self._start = ts if not keyframes_only else -1.0
        return self

    def __iter__(self):
        for frame in self.container.decode(self.stream):
            t = float(frame.time)
            if t + 1e-9 < self._start:
                continue
            data = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
            yield {"data": data, "pts": t}


def install() -> None:
    torchvision.io.VideoReader = PyAVVideoReader
    if not hasattr(torchvision, "set_video_backend"):
        torchvision.set_video_backend = lambda backend: None
    else:
        real = torchvision.set_video_backend

        def set_backend(backend: str) -> None:
            try:
                real(backend)
            except Exception:
                pass

        torchvision.set_video_backend = set_backend
