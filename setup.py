"""kosmos: native-multimodal decoders (KOSMOS-1 / PaLM-E style) in JAX + Flax NNX."""

import setuptools

# Ranges install on Python 3.11 (jax <= 0.10) and 3.12 (jax 0.11+).
INSTALL_REQUIRES = [
    "jax>=0.8,<0.13",
    "flax>=0.12.4,<0.13",
    "optax>=0.2.4,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "grain>=0.2.12,<0.3",
    "array-record>=0.7,<0.9",
    "sentencepiece>=0.2,<0.3",
    "ml-collections>=1.0,<2",
    "clu>=0.0.12,<0.1",
    "tensorflow-datasets>=4.9.8,<5",
    "tensorflow-cpu>=2.18,<3",
    "tensorboard>=2.18,<3",
    "numpy>=1.26,<3",
    "pillow>=10,<14",
    "msgpack>=1.0,<2",
    "tqdm>=4.66,<5",
    "matplotlib>=3.8,<4",
    "pyarrow>=15,<30",
    "zstandard>=0.22,<1",
    "importlib_resources>=6",
]

EXTRAS = {
    "tpu": ["jax[tpu]>=0.8,<0.13"],
    "gpu": ["jax[cuda12]>=0.8,<0.13"],
    "dev": [
        "pytest>=8,<10",
        "pytest-xdist>=3.5,<4",
        "hypothesis>=6.100,<7",
        # The Makefile installs torch==2.13.0 (the CPU build) first; this range then adds nothing.
        "torch>=2.4,<2.15",
        "transformers>=5.0,<6",
        "safetensors>=0.4,<1",
        "pycocoevalcap>=1.2,<2",
    ],
}

setuptools.setup(
    name="kosmos",
    version="0.1.0",
    description="Native-multimodal decoders (KOSMOS-1, PaLM-E, LLaVA, BLIP-2 as configs) in JAX/Flax NNX",
    packages=setuptools.find_packages(include=["kosmos", "kosmos.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "kosmos-summary=kosmos.model.summary:main",
            "kosmos-train=kosmos.train.main:main",
            "kosmos-eval=kosmos.eval.main:main",
            "kosmos-chat=kosmos.infer.chat:main",
            "kosmos-export=kosmos.interop.main:export_main",
            "kosmos-import=kosmos.interop.main:import_main",
            "kosmos-compile=kosmos.train.compile:main",
        ],
    },
)
