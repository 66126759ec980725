"""fer_ros: real-time multi-person facial expression recognition for social robots.

The core (detection, preprocessing, classification, tracking, the pipeline) imports no
ROS module, so it can be used and tested without a ROS graph; the nodes wrap it.
"""

import pkgutil as _pkgutil

# The message classes (fer_ros.msg) are generated and installed by the ROS build; this
# lets a source checkout on sys.path find them next to the installed copy.
__path__ = _pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"

#: The one label order used everywhere (FER-2013's): model outputs, messages, logs, configs.
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

__all__ = ["LABELS", "__version__"]
