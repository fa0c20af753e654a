"""Video decoding: decord (fast random access) with a PyAV fallback (decord has no wheel for
Linux aarch64 or macOS arm64). Both return RGB uint8 frames (T, H, W, 3) as numpy arrays."""
import importlib.util

import numpy as np

READERS = ("auto", "decord", "pyav")


def resolve_reader(reader):
    """"decord" or "pyav" for `reader` in READERS; ImportError when the named one is missing."""
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    have_decord = importlib.util.find_spec("decord") is not None
    have_av = importlib.util.find_spec("av") is not None
    if reader == "auto":
        if have_decord:
            return "decord"
        if have_av:
            return "pyav"
        raise ImportError("reading videos needs decord or PyAV: pip install decord (x86_64) or pip install av")
    if reader == "decord" and not have_decord:
        raise ImportError("reader='decord' but decord is not installed (pip install decord; no aarch64 wheel: "
                          "use reader='pyav')")
    if reader == "pyav" and not have_av:
        raise ImportError("reader='pyav' but PyAV is not installed (pip install av)")
    return reader


class DecordVideo:
    """Random-access frames through decord. One decoding thread: DataLoader workers parallelise."""

    def __init__(self, path):
        import decord
        self.path = path
        self._vr = decord.VideoReader(path, num_threads=1)
        self._pyav = None
        self.num_frames = len(self._vr)

    def get_frames(self, indices):
        if self._pyav is None:
            try:
                return self._vr.get_batch(list(indices)).asnumpy()
            except Exception as exc:
                # decord 0.6 refuses some valid small videos (widths 16, 24, 48: "Check failed: from_size
                # == to_size") that FFmpeg decodes through PyAV: read this file with PyAV from now on.
                if type(exc).__name__ != "DECORDError" or "from_size == to_size" not in str(exc) \
                        or importlib.util.find_spec("av") is None:
                    raise
                self._pyav = PyAVVideo(self.path)
        return self._pyav.get_frames(indices)

    def close(self):
        self._vr = None
        if self._pyav is not None:
            self._pyav.close()


class PyAVVideo:
    """Frames through PyAV by decoding from the start up to the last wanted frame.

    Seeking in H.264 lands on key frames and would need care to hit exact indices; clips used
    for pretraining are short, so a sequential decode is exact and simple. The frame count comes
    from the container (`stream.frames`), else duration × frame rate; when the stream ends
    earlier than announced, indices past the end get the last decoded frame (as decord-style
    samplers clamp to the last frame).
    """

    def __init__(self, path):
        import av
        self._path = path
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{path!r} has no video stream")
            stream = container.streams.video[0]
            n = stream.frames
            if n <= 0 and stream.duration and stream.average_rate:
                n = round(float(stream.duration * stream.time_base * stream.average_rate))
            if n <= 0:  # no count in the container: count by decoding
                n = sum(1 for _ in container.decode(stream))
        self.num_frames = n

    def get_frames(self, indices):
        import av
        indices = [int(i) for i in indices]
        wanted, last = set(indices), max(indices)
        got, previous = {}, None
        with av.open(self._path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                previous = frame
                if i >= last:
                    break
        if previous is None:
            raise ValueError(f"{self._path!r}: no frame could be decoded")
        tail = None
        out = []
        for i in indices:
            if i not in got:
                tail = previous.to_ndarray(format="rgb24") if tail is None else tail
            out.append(got.get(i, tail))
        return np.stack(out)

    def close(self):
        pass


def open_video(path, reader="auto"):
    """A video object with `.num_frames` and `.get_frames(indices) -> uint8 (T, H, W, 3)`."""
    kind = resolve_reader(reader)
    video = DecordVideo(path) if kind == "decord" else PyAVVideo(path)
    if video.num_frames <= 0:
        raise ValueError(f"{path!r} has no frames")
    return video
