{
  "targets": [
    {
      "target_name": "convnets_native",
      "sources": [
        "native/addon.c",
        "native/pool.c",
        "native/gemm.c",
        "native/conv.c",
        "native/conv_direct.c",
        "native/kernels.c",
        "native/dw_avx512.c"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-std=gnu11", "-O3", "-fno-math-errno", "-Wall", "-Wno-unused-function", "-pthread"],
      "cflags!": ["-O2", "-fno-omit-frame-pointer"],
      "ldflags": ["-pthread"],
      "libraries": ["-lm"],
      "xcode_settings": {
        "GCC_OPTIMIZATION_LEVEL": "3",
        "OTHER_CFLAGS": ["-std=gnu11", "-O3", "-fno-math-errno"]
      }
    }
  ]
}
