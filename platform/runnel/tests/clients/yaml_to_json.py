#!/usr/bin/env python3
"""Prints the YAML file FILE as JSON on one line (PyYAML's safe loader), for tests that
check the structure of deploy files. Exit 1 with the parser's message if it does not parse.

Usage: yaml_to_json.py FILE
"""

import json
import sys

import yaml

try:
    with open(sys.argv[1]) as f:
        print(json.dumps(yaml.safe_load(f)))
except yaml.YAMLError as error:
    print(f"yaml_to_json: {sys.argv[1]}: {error}", file=sys.stderr)
    sys.exit(1)
