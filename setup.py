import setuptools

# The gateway's compiled lane (sheepdog_backend/gateway/_lane.c): steady-state
# object I/O relayed by a C thread; needs a C compiler and Python's headers.
setuptools.setup(
    ext_modules=[
        setuptools.Extension(
            "sheepdog_backend.gateway._lane",
            sources=["sheepdog_backend/gateway/_lane.c"],
            extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror",
                                "-Wno-missing-field-initializers",
                                "-Wno-cast-function-type"],
        ),
    ],
)
