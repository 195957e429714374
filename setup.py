"""Install vmamba_zoo.

The kernel sources live in the top-level ``kernels/`` folder but are installed as ``vmamba_zoo.kernels``; no top-level
``kernels`` module is installed.
"""
from setuptools import find_packages, setup

packages = find_packages(include=['vmamba_zoo', 'vmamba_zoo.*']) + ['vmamba_zoo.kernels']

setup(
    name='vmamba_zoo',
    version='0.1.0',
    description='Vision state-space models (visual Mamba) for timm and OpenMMLab, on one Triton selective-scan core',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=packages,
    package_dir={'vmamba_zoo.kernels': 'kernels'},
    install_requires=[
        'torch>=2.4',
        'timm>=1.0.15',
        'triton>=3.0; platform_system=="Linux"',
        'numpy',
        'pillow',
        'fvcore',
    ],
    extras_require={
        'test': ['pytest>=8', 'pytest-xdist>=3', 'hypothesis>=6', 'scikit-learn', 'matplotlib>=3.5'],
        'tools': ['matplotlib>=3.5', 'tqdm'],
        'official': ['einops'],  # tools/compare_official_*: importing official model code from a user checkout
        'mm': [
            'mmengine>=0.10,<1.0',
            'mmcv==2.1.0',
            'mmdet==3.3.0',
            'mmsegmentation==1.2.2',
            'ftfy',
            'regex',
            'pycocotools',
            'scikit-image',
        ],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
