# autoballoon: every target installs what it needs first (Debian 12, as root).
SHELL := /bin/bash
VENV ?= .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)
PY := $(VENV)/bin/python
BASE_PYTHON ?= /usr/bin/python3
# Every program a test or a target runs comes from one of these (the list of
# programs is autoballoon_lab/prereq.py PROGRAMS; tests/unit/test_prereq.py checks
# it against this line). --no-install-recommends is deliberate, so nothing that is
# only recommended may be relied on: libxml2-utils (xmllint, which virt-xml-validate
# runs) is merely recommended by libvirt-clients. debootstrap builds the Debian 13
# root of molecule's second VM (autoballoon_lab/debian_root.py).
APT_PACKAGES := python3-venv python3-dev gcc pkg-config libvirt-dev libvirt-daemon-system \
	libvirt-clients libxml2-utils qemu-system-x86 qemu-utils busybox-static cpio \
	openssh-server openssh-client systemd systemd-container git debootstrap
STAMP := .cache/stamps

.PHONY: all deps venv image demo test test-unit test-integration bench lint docs ansible-check \
	molecule clean

all: test

$(STAMP)/apt: Makefile
	@mkdir -p $(STAMP)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@touch $@

$(STAMP)/venv: pyproject.toml $(STAMP)/apt
	@test -x $(PY) || $(BASE_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# the development tools (autoballoon_lab, autoballoon_sim, bench/, tools/) are not
	@# packaged (docs/architecture.md, Layout): the checkout goes on the virtualenv's path
	$(PY) -c 'import pathlib, sys, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], \
		"autoballoon-checkout.pth").write_text(sys.argv[1] + "\n")' "$(CURDIR)"
	@touch $@

deps: $(STAMP)/venv

venv: deps

image: deps
	$(PY) -m autoballoon_lab.image

demo: deps
	$(PY) -m autoballoon_lab.demo $(DEMO_ARGS)

# the stages are the sessions of noxfile.py (docs/testing.md)
test: deps
	$(PY) -m nox

test-unit: deps
	$(PY) -m nox -s unit

test-integration: deps
	$(PY) -m nox --no-dependencies -s integration end_to_end

bench: deps
	$(PY) -m bench $(BENCH)

ansible-check: deps
	$(PY) tools/ansible_checks.py

molecule: deps
	molecule test

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# the option tables and the hook reference in docs/ (a unit test checks them)
docs: deps
	$(PY) tools/gen_config_docs.py

clean:
	rm -rf $(VENV) .cache build dist *.egg-info
