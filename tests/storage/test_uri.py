from __future__ import annotations

import pytest

from isvc.storage.errors import InvalidUri, UnsupportedScheme
from isvc.storage.uri import parse_uri


@pytest.mark.parametrize(
    ("raw", "scheme", "authority", "path", "revision"),
    [
        ("pvc://global-shared/models", "pvc", "global-shared", "models", None),
        ("pvc://claim", "pvc", "claim", "", None),
        ("s3://bucket/llama/", "s3", "bucket", "llama", None),
        ("gs://bucket", "gs", "bucket", "", None),
        ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", "hf", "HuggingFaceTB", "SmolLM2-135M-Instruct", None),
        ("hf://org/model:v1.0", "hf", "org", "model", "v1.0"),
        ("https://host:8443/a/model.tar.gz?sig=1", "https", "host:8443", "a/model.tar.gz", None),
        ("file:///data/models", "file", "", "/data/models", None),
        ("/data/models", "file", "", "/data/models", None),
    ],
)
def test_parse_known_schemes(raw: str, scheme: str, authority: str, path: str, revision: str | None) -> None:
    uri = parse_uri(raw)
    assert (uri.scheme, uri.authority, uri.path, uri.revision) == (scheme, authority, path, revision)


def test_cache_key_is_stable_and_distinguishes_revisions() -> None:
    assert parse_uri("s3://b/llama").cache_key() == parse_uri("s3://b/llama/").cache_key()
    assert parse_uri("hf://o/m:v1").cache_key() != parse_uri("hf://o/m:v2").cache_key()
    assert parse_uri("hf://o/m").cache_key() != parse_uri("hf://o/m").cache_key("filtered")
    assert parse_uri("hf://o/m").cache_key().startswith("hf-o-m-")


def test_unknown_scheme_names_the_scheme_and_the_supported_ones() -> None:
    with pytest.raises(UnsupportedScheme) as info:
        parse_uri("ftp://host/model")
    assert "'ftp://'" in str(info.value)
    assert "s3://" in info.value.hint and "pvc://" in info.value.hint


def test_alias_scheme_suggests_the_right_one() -> None:
    with pytest.raises(UnsupportedScheme) as info:
        parse_uri("gcs://bucket/model")
    assert "Use gs:// instead" in info.value.hint


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("", "empty"),
        ("s3:///prefix", "no bucket"),
        ("pvc://", "no claim"),
        ("pvc://claim/../etc", "'..'"),
        ("hf://gpt2", "hf://<org>/<model>"),
        ("hf://org/model:", "empty revision"),
        ("https://host/", "names no file"),
    ],
)
def test_malformed_uris_say_what_is_wrong(raw: str, needle: str) -> None:
    with pytest.raises(InvalidUri) as info:
        parse_uri(raw)
    assert needle in str(info.value)
