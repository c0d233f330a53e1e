# Everything goes into .venv at the repository root. `make demo` and `make test` install first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages: dicom3tools gives dciodvfy (validates output against the IODs), dcmtk gives a real peer,
# chromium renders the scan's HTML report in tests/scan/test_scan.py (headless screenshot); libgdcm-tools gives
# gdcmanon, GDCM's anonymizer, which benchmarks/header_throughput.py measures beside deidpipe.
APT_PACKAGES := dicom3tools dcmtk tesseract-ocr chromium orthanc orthanc-dicomweb libgdcm-tools
STAMP := $(VENV)/.installed
# pip compiles every installed module to bytecode one file at a time (torch, presidio, spaCy: tens of thousands of
# files), 46 of the install's 97 s here; compileall on every core does it in 21 s once everything is in (left to
# Python at first import, it cost the suite 30-45 s: its processes compiled the same modules side by side).
PIP_NO_COMPILE := --no-compile

.PHONY: install demo test lint bench docs clean apt

install: $(STAMP)

apt:
	@missing=""; for t in dciodvfy dcmdump tesseract chromium Orthanc gdcmanon; do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi

$(STAMP): pyproject.toml requirements.lock
	$(MAKE) apt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(PIP_NO_COMPILE) -c requirements.lock -e '.[dev,bench,docs]'
	$(BIN)/pip install -q $(PIP_NO_COMPILE) --no-deps presidio-image-redactor==0.0.62
	# pycanon (benchmarks/scan.py's k-anonymity comparison) pins numpy 2.0 and scipy 1.15: --no-deps, its
	# pandas and beartype come from the bench extra.
	$(BIN)/pip install -q $(PIP_NO_COMPILE) --no-deps pycanon==1.3.6
	# pydeface: only its MIT template and face mask are used (checked by SHA-256 in deidpipe/deface/template.py);
	# --no-deps because it requires nipype (and nipype's tree) for an FSL wrapper deidpipe never calls.
	$(BIN)/pip install -q $(PIP_NO_COMPILE) --no-deps pydeface==2.1.0
	# as pip does, a file that does not compile (Python 2 test data inside a package) is passed over
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

demo: install
	$(BIN)/python -m deidpipe.demo

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

lint: install
	$(BIN)/ruff check deidpipe tests benchmarks

# The documentation site (mkdocs.yml): Material theme, API pages from the docstrings, into site/. --strict: a
# broken link, anchor or API reference fails the build. Offline: no font or asset is fetched.
# mkdocs-material is pinned to 9.7.1, the last release before its end-of-life notice (printed on every build from
# 9.7.2 on); the move to Zensical is planned in docs/architecture.md.
docs: install
	$(BIN)/mkdocs build --strict --site-dir site

bench: install
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) build dist *.egg-info demo-output site
