/* Stand-in libcufft.so.11 for ASTRA 2.5.0's wheel on a CUDA 13 machine: forwards its five cuFFT calls to libcufft.so.12. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
static void *lib;
static void *sym(const char *name) {
    if (!lib && !(lib = dlopen("libcufft.so.12", RTLD_NOW | RTLD_GLOBAL))) { fprintf(stderr, "cufft shim: %s\n", dlerror()); abort(); }
    return dlsym(lib, name);
}
typedef int (*f_plan)(int *, int, int, int);
typedef int (*f_exec)(int, void *, void *);
typedef int (*f_destroy)(int);
typedef int (*f_stream)(int, void *);
int cufftPlan1d(int *p, int nx, int type, int batch) { return ((f_plan)sym("cufftPlan1d"))(p, nx, type, batch); }
int cufftExecR2C(int p, void *i, void *o) { return ((f_exec)sym("cufftExecR2C"))(p, i, o); }
int cufftExecC2R(int p, void *i, void *o) { return ((f_exec)sym("cufftExecC2R"))(p, i, o); }
int cufftDestroy(int p) { return ((f_destroy)sym("cufftDestroy"))(p); }
int cufftSetStream(int p, void *s) { return ((f_stream)sym("cufftSetStream"))(p, s); }
