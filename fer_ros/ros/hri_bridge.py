"""hri_bridge: fer_ros results as REP-155 (ROS4HRI) face topics.

Subscribes to `faces/expressions` (fer_ros/FaceExpressionArray) and publishes, like
ros4hri/hri_face_detect does for its per-face topics:

- `/humans/faces/tracked` hri_msgs/IdsList: the ids of the faces in the latest frame;
- `/humans/faces/<id>/expression` hri_msgs/Expression for each of them. The id is
  `<id_prefix><face_id>` (`f3`): a valid ROS name, stable while the track lives. A face's
  publisher is created when it appears and destroyed when it leaves.

Expression names are REP-155's (angry, disgusted, scared, happy, sad, surprised, neutral);
`confidence` is carried over; valence and arousal are the score-weighted mean of each label's
place on Russell's circumplex of affect (CIRCUMPLEX below), an approximation, not a measurement.
Needs hri_msgs (on a ROS install `ros-<distro>-hri-msgs`; here `make build` with $FER_SHARED/vendor).
"""

from __future__ import annotations

import re
import sys

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from fer_ros import LABELS

from .params import Param, declare_params, qos_from_params, qos_params, run_node

# fer_ros label -> REP-155 (hri_msgs/Expression) name
REP155_NAMES = {"angry": "angry", "disgust": "disgusted", "fear": "scared", "happy": "happy", "sad": "sad",
                "surprise": "surprised", "neutral": "neutral"}
# (valence, arousal) in [-1, 1] of each label: approximate positions on Russell's circumplex
# (J. A. Russell, "A circumplex model of affect", 1980), neutral at the centre.
CIRCUMPLEX = {"angry": (-0.6, 0.7), "disgust": (-0.7, 0.3), "fear": (-0.6, 0.8), "happy": (0.8, 0.5),
              "sad": (-0.7, -0.4), "surprise": (0.2, 0.8), "neutral": (0.0, 0.0)}
_VA = np.array([CIRCUMPLEX[label] for label in LABELS], dtype=np.float64)

PARAMS = [
    Param("id_prefix", "f", "REP-155 face id = this prefix + the fer_ros face_id (a ROS name must not "
          "start with a digit).", read_only=True),
    Param("max_faces", 50, "Publish at most this many faces per frame (bounds the per-face publishers).",
          range=(1, 1000), read_only=True),
    *qos_params("qos", "reliable", 10, "the faces/expressions subscription"),
]


def valence_arousal(scores) -> tuple[float, float]:
    """Score-weighted mean circumplex position; (0, 0) when the scores are not 7 finite values."""
    p = np.asarray(scores, dtype=np.float64).reshape(-1)
    if p.size != len(LABELS) or not np.all(np.isfinite(p)) or p.sum() <= 0:
        return 0.0, 0.0
    va = (p / p.sum()) @ _VA
    return float(np.clip(va[0], -1, 1)), float(np.clip(va[1], -1, 1))


class HriBridge(Node):
    def __init__(self, **kwargs):
        super().__init__("hri_bridge", **kwargs)
        try:
            from hri_msgs.msg import Expression, IdsList
        except ImportError:
            raise ImportError("hri_msgs is not installed (ROS: ros-<distro>-hri-msgs; here: `make build` "
                              "with $FER_SHARED/vendor)") from None
        from fer_ros.msg import FaceExpressionArray

        self.Expression, self.IdsList = Expression, IdsList
        self.p = declare_params(self, PARAMS)
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", self.p["id_prefix"]):
            raise ValueError(f"id_prefix {self.p['id_prefix']!r}: use a letter, then letters, digits or _ "
                             "(ids become topic names /humans/faces/<id>/...)")
        self.qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_tracked = self.create_publisher(IdsList, "/humans/faces/tracked", self.qos)
        self.faces = {}  # REP-155 id -> its expression publisher
        self.sub = self.create_subscription(FaceExpressionArray, "faces/expressions", self.on_faces,
                                            qos_from_params(self.p, "qos"))
        self.get_logger().info(f"REP-155 faces from {self.sub.topic_name} -> /humans/faces/...")

    def on_faces(self, msg):
        faces = list(msg.faces)[: self.p["max_faces"]]
        ids = [f"{self.p['id_prefix']}{int(f.face_id)}" for f in faces]
        for gone in set(self.faces) - set(ids):
            self.destroy_publisher(self.faces.pop(gone))
        for face_id, face in zip(ids, faces):
            if face_id not in self.faces:
                self.faces[face_id] = self.create_publisher(
                    self.Expression, f"/humans/faces/{face_id}/expression", self.qos)
            valence, arousal = valence_arousal(face.scores)
            self.faces[face_id].publish(self.Expression(
                header=msg.header, expression=REP155_NAMES.get(face.expression, ""), valence=valence,
                arousal=arousal, confidence=float(np.clip(face.confidence, 0.0, 1.0))))
        self.pub_tracked.publish(self.IdsList(header=msg.header, ids=ids))


def main(args=None) -> int:
    # ImportError: hri_msgs missing; ValueError: bad parameter
    return run_node("hri_bridge", HriBridge, (ImportError, ValueError), args)


if __name__ == "__main__":
    sys.exit(main())
