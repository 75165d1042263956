import setuptools

# The gateway's compiled lane (sheepdog_backend/gateway/_lane.c, the Python
# type, and lane_c/: one pair's relay, the hand-backs, the thread): steady-state
# object I/O relayed by a C thread; needs a C compiler and Python's headers.
setuptools.setup(
    ext_modules=[
        setuptools.Extension(
            "sheepdog_backend.gateway._lane",
            sources=["sheepdog_backend/gateway/_lane.c",
                     "sheepdog_backend/gateway/lane_c/handback.c",
                     "sheepdog_backend/gateway/lane_c/relay.c",
                     "sheepdog_backend/gateway/lane_c/splice.c",
                     "sheepdog_backend/gateway/lane_c/thread.c"],
            depends=["sheepdog_backend/gateway/lane_c/lane.h"],
            extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror",
                                "-fvisibility=hidden",
                                "-Wno-missing-field-initializers",
                                "-Wno-cast-function-type"],
        ),
    ],
)
