"""vqedge.demo: a Gradio web demo of the torch-free runtime (``vqedge demo``; needs [demo]).

Importing this package imports neither gradio nor onnxruntime; ``vqedge.demo.app`` does.
"""

import os

# Set here, before vqedge.demo.app imports gradio: no analytics, no version check calling home.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

# uploads with a larger side are downscaled (or refused) before tokenizing
DEFAULT_MAX_SIDE = 1024
# model requests (all endpoints together) running at once; the others wait in the queue
DEFAULT_CONCURRENCY = 2
# requests that may wait in the queue; more are turned away
DEFAULT_QUEUE_SIZE = 64
# largest upload accepted by the server
DEFAULT_MAX_FILE_SIZE = "20mb"
