"""One source of the pipeline's settings: the node's parameters, `fer-ros analyze` and bag replay
all come from fer_ros.perception.settings."""

import argparse
import inspect

import pytest

from fer_ros.perception import analyze, settings
from fer_ros.perception.pipeline import ExpressionPipeline
from fer_ros.perception.settings import OFFLINE, SETTINGS, build_pipeline, check_value, resolve


def test_node_parameters_are_the_settings():
    from fer_ros.ros.expression_node import PARAMS

    declared = {p.name: p for p in PARAMS}
    for s in SETTINGS:
        p = declared[s.name]
        assert (p.default, p.description, p.range) == (s.default, s.description, s.range), s.name


def test_robot_defaults_are_the_measured_setting():
    d = settings.defaults()
    # docs/ros.md: background scans every 5 frames keep 3 faces at 30 FPS within the frame budget
    assert d["detect_interval"] == 5 and d["async_scan"] is True


def test_pipeline_class_defaults_agree_except_the_documented_one():
    sig = inspect.signature(ExpressionPipeline.__init__).parameters
    names = {"detect_interval": "detect_interval", "hold_frames": "hold_frames", "smoothing": "smoothing",
             "max_faces": "max_faces", "min_face_size": "min_face_size", "tracking": "tracking",
             "tracking.iou_threshold": "iou_threshold", "tracking.max_age_s": "max_age_s",
             "tracking.max_age_frames": "max_age_frames", "detector": "detector", "backend": "backend"}
    for name, arg in names.items():
        assert sig[arg].default == settings.BY_NAME[name].default, name
    # the library class stays reproducible by default; the robot default turns background scans on
    assert sig["async_scan"].default is False


def _analyze_args(*argv):
    parser = argparse.ArgumentParser()
    analyze.add_arguments(parser)
    return parser.parse_args(["x.jpg", *argv])


def test_analyze_options_come_from_the_settings():
    values = analyze.setting_values(_analyze_args())
    assert values == {**settings.defaults(), **OFFLINE}
    values = analyze.setting_values(_analyze_args("--detect-interval", "3", "--no-flip-average", "--model", "m.onnx",
                                                  "--detector-model", "y.onnx", "--tracking-max-age-s", "2"))
    assert values["detect_interval"] == 3 and values["flip_average"] is False
    assert values["model_path"] == "m.onnx" and values["detector.model"] == "y.onnx"
    assert values["tracking.max_age_s"] == 2.0
    with pytest.raises(SystemExit):  # choices are enforced by the parser
        _analyze_args("--detector", "retinaface")


def test_values_are_checked_against_type_range_and_choices():
    assert check_value("smoothing", 0) == 0.0 and isinstance(check_value("smoothing", 0), float)
    for name, bad in [("smoothing", 1.5), ("detect_interval", 0), ("detector", "retinaface"), ("async_scan", 1),
                      ("max_faces", "3")]:
        with pytest.raises(ValueError, match=name.split(".")[0]):
            check_value(name, bad)
    with pytest.raises(ValueError, match="no pipeline setting"):
        resolve({"detect_intervall": 3})


def test_build_pipeline_applies_the_values():
    pipe = build_pipeline({"detect_interval": 7, "async_scan": False, "flip_average": False, "hold_frames": 0,
                           "image_topic": "ignored/for/the/pipeline"})
    try:
        assert pipe.detect_interval == 7 and pipe.hold_frames == 0
        assert pipe.classifier.flip_average is False
    finally:
        pipe.close()
    with pytest.raises(ValueError, match="detector.model"):
        build_pipeline({"detector": "yunet"})


def test_replay_checks_overrides_against_the_same_settings():
    from fer_ros.bags.messages import BagError
    from fer_ros.bags.replay import coerce_params

    assert coerce_params({"detect_interval": 2})["detect_interval"] == 2
    with pytest.raises(BagError, match="detect_interval"):
        coerce_params({"detect_interval": 0})
