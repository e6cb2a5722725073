# herd — the two Quickstart commands (`make demo`, `make test`) do all set-up on a
# fresh Debian machine, as root.

VENV      ?= .venv
PY        := $(VENV)/bin/python
HERD      := $(VENV)/bin/herd
LAB_HOSTS ?= 3
LAB_DIR   ?= /var/lib/herd-lab
export HERD_LAB_DIR := $(LAB_DIR)

# linux-image-cloud-amd64: the kernel the agent boots to probe whether KVM really works,
# and (with busybox-static) the lab's test guest. cpio: the tests read that guest's initramfs.
# postgresql: only for the test suite's throwaway server (tests/pgserver.py: initdb under
# /dev/shm, loopback, a free port); herd itself needs no PostgreSQL unless pointed at one.
APT_PACKAGES := python3 python3-venv python3-pip openssh-server openssh-client \
	libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients \
	qemu-system-x86 qemu-utils util-linux iproute2 procps \
	linux-image-cloud-amd64 busybox-static cpio nftables postgresql

# The engines the tests run on: sqlite, postgresql or both (tests/conftest.py).
HERD_TEST_DB ?= both
# pytest-xdist workers: one per core. Each keeps a test module whole (--dist loadfile:
# module fixtures, such as a booted set of servers, are made once) and gets its own
# session lab on its own addresses and its own PostgreSQL (tests/e2e/conftest.py).
TEST_WORKERS ?= $(shell nproc)

.PHONY: install system-packages demo demo-down test test-fast lint bench clean

system-packages:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi
	@# libvirtd runs QEMU as libvirt-qemu:kvm; minimal images may lack both.
	@getent group kvm >/dev/null || groupadd --system kvm
	@getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
	@id libvirt-qemu >/dev/null 2>&1 || useradd --system -g kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,postgres]'
	touch $@

install: system-packages $(VENV)/.installed

demo: install
	$(HERD) lab up --hosts $(LAB_HOSTS)
	$(HERD) inventory apply $(LAB_DIR)/inventory.yaml
	$(HERD) host refresh
	$(HERD) server create demo --flavor m1.tiny --image herd-test --count 4
	$(HERD) server list
	$(HERD) host list
	@# The test guest prints what it received (UUID, hostname, IP, user-data) on its
	@# serial console: wait for it to finish booting, then show it.
	@for i in $$(seq 90); do \
		$(HERD) server console-log demo-1 --lines 200 | grep -q '^HERD-TEST ready' && break; \
		sleep 1; \
	done
	$(HERD) server console-log demo-1 --lines 200 | grep '^HERD-TEST'
	@# Each guest serves its instance-id on port 80 at its herd-assigned address on the
	@# provider bridge: fetch it from here, as a user on the guests' LAN would.
	$(HERD) server list --json | $(PY) -m orchestrator.lab.reach

demo-down:
	-$(HERD) server delete $$($(HERD) server list --json | $(PY) -c 'import json,sys; print(" ".join(s["name"] for s in json.load(sys.stdin)))')
	$(HERD) lab down

test: install
	HERD_TEST_DB=$(HERD_TEST_DB) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	HERD_TEST_DB=$(HERD_TEST_DB) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not e2e"

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) -m bench.rpc
	$(PY) -m bench.reconcile
	$(PY) -m bench.scheduler
	$(PY) -m bench.db
	$(PY) -m bench.cli
