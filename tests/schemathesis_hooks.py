"""
Loaded by schemathesis (C{SCHEMATHESIS_HOOKS}) in C{tests/test_openapi.py}:
a v2 PATCH body is JSON under Glance's own media type.
"""

import schemathesis

from glance_tx.api.openapi import PATCH_MEDIA_TYPE

schemathesis.serializer.alias(PATCH_MEDIA_TYPE, "application/json")
