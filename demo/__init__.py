"""vqedge.demo: a Gradio web demo of the torch-free runtime (``vqedge demo``; needs [demo]).

``vqedge.demo.engine`` holds what the demo computes (no gradio); ``vqedge.demo.app`` lays it
out as a page and serves it. Importing this package imports neither gradio nor onnxruntime.
"""

import os
from pathlib import Path

# Set here, before vqedge.demo.app imports gradio: no analytics, no version check calling home.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

# uploads with a larger side are downscaled (or refused) before tokenizing: a web page shows
# the result beside the original, and the server's memory is shared by every visitor
UPLOAD_MAX_SIDE = 1024
# model requests (all endpoints together) running at once; the others wait in the queue
DEFAULT_CONCURRENCY = 2
# requests that may wait in the queue; more are turned away
DEFAULT_QUEUE_SIZE = 64
# largest upload accepted by the server
DEFAULT_MAX_FILE_SIZE = "20mb"
# what happens to an upload with a side above the max side
OVERSIZE_CHOICES = ("downscale", "refuse")
# the held-out photos (see examples/SOURCES.md); none when the package data is missing
EXAMPLES = sorted(p for p in (Path(__file__).parent / "examples").glob("*.[jp][pn]g"))
