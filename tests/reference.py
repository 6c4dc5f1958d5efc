"""Independent reference figures for the tests, written out by hand (not read from the package)."""

# T5 v1.1 shapes: size -> (layers, heads, d_kv, d_model, d_ff), encoder = decoder.
# Source: flaxformer t5_1_1_{size}.gin, as tabled in shared/reference/fido.md.
T5 = {
    "small": (8, 6, 64, 512, 1024),
    "base": (12, 12, 64, 768, 2048),
    "large": (24, 16, 64, 1024, 2816),
    "xl": (24, 32, 64, 2048, 5120),
    "xxl": (24, 64, 64, 4096, 10240),
}
