// Schemas of the `sigma_kernels_ext` ops, their CPU implementations, and the Python module
// entry point (importing `sigma_kernels._C` registers the ops under torch.ops.sigma_kernels_ext).
#include <Python.h>
#include <torch/library.h>

#include <tuple>

namespace sigma_cpu {
using at::Tensor;
using Pair = std::tuple<Tensor, Tensor>;

Tensor sinkhorn_col_lse(const Tensor& scores, const Tensor& u, double inv_eps);
Pair sinkhorn_row_step(const Tensor& scores, const Tensor& v, double inv_eps, double log_m);
Tensor sinkhorn_assign(const Tensor& scores, const Tensor& v, double inv_eps);
Tensor sinkhorn_plan(const Tensor& scores, const Tensor& u, const Tensor& v, double inv_eps, double log_m);
std::tuple<Tensor, Tensor, Tensor, Tensor> sinkhorn_solve_dense(const Tensor& scores, double inv_eps, int64_t n_iters,
                                                                double tol, int64_t check_every, bool want_plan);
Tensor row_logsumexp(const Tensor& scores, double scale);
Tensor scores_product(const Tensor& x, const Tensor& c);
Pair sinkhorn_assign_entropy(const Tensor& scores, const Tensor& v, double inv_eps, bool entropy);
Pair streaming_assign_entropy(const Tensor& x, const Tensor& c, const Tensor& v, double inv_eps, bool entropy);
Tensor streaming_col_lse(const Tensor& x, const Tensor& c, const Tensor& u, double inv_eps);
Pair streaming_row_step(const Tensor& x, const Tensor& c, const Tensor& v, double inv_eps, double log_m);
Tensor streaming_assign(const Tensor& x, const Tensor& c, const Tensor& v, double inv_eps);
Pair linear_cross_entropy_forward(const Tensor& x, const Tensor& c, const Tensor& target, double scale);
Pair linear_cross_entropy_backward(const Tensor& grad, const Tensor& x, const Tensor& c, const Tensor& target,
                                   const Tensor& lse, double scale, bool need_dx, bool need_dc);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> softmax_products(const Tensor& scores, double scale,
                                                                   const c10::optional<Tensor>& v, const Tensor& c,
                                                                   const c10::optional<Tensor>& x, bool labels);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> swapped_softmax_products(
    const Tensor& scores, const Tensor& xb, const Tensor& c, const Tensor& va, const Tensor& vb, double inv_eps,
    double scale, const c10::optional<Tensor>& za, const c10::optional<Tensor>& zb, bool labels);
Pair sinkhorn_target_cross_entropy_forward(const Tensor& x, const Tensor& c, const Tensor& y, const Tensor& cy,
                                           const Tensor& v, double inv_eps, double scale, bool soft);
Pair sinkhorn_target_cross_entropy_backward(const Tensor& grad, const Tensor& x, const Tensor& c, const Tensor& y,
                                            const Tensor& cy, const Tensor& v, const Tensor& lse, double inv_eps,
                                            double scale, bool soft, bool need_dx, bool need_dc);
}  // namespace sigma_cpu

TORCH_LIBRARY(sigma_kernels_ext, m) {
  m.def("sinkhorn_col_lse(Tensor scores, Tensor u, float inv_eps) -> Tensor");
  m.def("sinkhorn_row_step(Tensor scores, Tensor v, float inv_eps, float log_m) -> (Tensor, Tensor)");
  m.def("sinkhorn_assign(Tensor scores, Tensor v, float inv_eps) -> Tensor");
  m.def("sinkhorn_plan(Tensor scores, Tensor u, Tensor v, float inv_eps, float log_m) -> Tensor");
  m.def("sinkhorn_solve_dense(Tensor scores, float inv_eps, int n_iters, float tol, int check_every, bool want_plan)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("row_logsumexp(Tensor scores, float scale) -> Tensor");
  m.def("scores_product(Tensor x, Tensor c) -> Tensor");
  m.def("sinkhorn_assign_entropy(Tensor scores, Tensor v, float inv_eps, bool entropy) -> (Tensor, Tensor)");
  m.def("streaming_assign_entropy(Tensor x, Tensor c, Tensor v, float inv_eps, bool entropy) -> (Tensor, Tensor)");
  m.def("streaming_col_lse(Tensor x, Tensor c, Tensor u, float inv_eps) -> Tensor");
  m.def("streaming_row_step(Tensor x, Tensor c, Tensor v, float inv_eps, float log_m) -> (Tensor, Tensor)");
  m.def("streaming_assign(Tensor x, Tensor c, Tensor v, float inv_eps) -> Tensor");
  m.def("linear_cross_entropy_forward(Tensor x, Tensor c, Tensor target, float scale) -> (Tensor, Tensor)");
  m.def("linear_cross_entropy_backward(Tensor grad, Tensor x, Tensor c, Tensor target, Tensor lse, float scale,"
        " bool need_dx=True, bool need_dc=True) -> (Tensor, Tensor)");
  m.def("softmax_products(Tensor scores, float scale, Tensor? v, Tensor c, Tensor? x, bool labels=False)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("swapped_softmax_products(Tensor scores, Tensor xb, Tensor c, Tensor va, Tensor vb, float inv_eps,"
        " float scale, Tensor? za, Tensor? zb, bool labels=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("sinkhorn_target_cross_entropy_forward(Tensor x, Tensor c, Tensor y, Tensor cy, Tensor v, float inv_eps,"
        " float scale, bool soft) -> (Tensor, Tensor)");
  m.def("sinkhorn_target_cross_entropy_backward(Tensor grad, Tensor x, Tensor c, Tensor y, Tensor cy, Tensor v,"
        " Tensor lse, float inv_eps, float scale, bool soft, bool need_dx=True, bool need_dc=True)"
        " -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sigma_kernels_ext, CPU, m) {
  m.impl("sinkhorn_col_lse", &sigma_cpu::sinkhorn_col_lse);
  m.impl("sinkhorn_row_step", &sigma_cpu::sinkhorn_row_step);
  m.impl("sinkhorn_assign", &sigma_cpu::sinkhorn_assign);
  m.impl("sinkhorn_plan", &sigma_cpu::sinkhorn_plan);
  m.impl("sinkhorn_solve_dense", &sigma_cpu::sinkhorn_solve_dense);
  m.impl("row_logsumexp", &sigma_cpu::row_logsumexp);
  m.impl("scores_product", &sigma_cpu::scores_product);
  m.impl("sinkhorn_assign_entropy", &sigma_cpu::sinkhorn_assign_entropy);
  m.impl("streaming_assign_entropy", &sigma_cpu::streaming_assign_entropy);
  m.impl("streaming_col_lse", &sigma_cpu::streaming_col_lse);
  m.impl("streaming_row_step", &sigma_cpu::streaming_row_step);
  m.impl("streaming_assign", &sigma_cpu::streaming_assign);
  m.impl("linear_cross_entropy_forward", &sigma_cpu::linear_cross_entropy_forward);
  m.impl("linear_cross_entropy_backward", &sigma_cpu::linear_cross_entropy_backward);
  m.impl("softmax_products", &sigma_cpu::softmax_products);
  m.impl("swapped_softmax_products", &sigma_cpu::swapped_softmax_products);
  m.impl("sinkhorn_target_cross_entropy_forward", &sigma_cpu::sinkhorn_target_cross_entropy_forward);
  m.impl("sinkhorn_target_cross_entropy_backward", &sigma_cpu::sinkhorn_target_cross_entropy_backward);
}

// No Python-level functions: the module exists so that `from sigma_kernels import _C` loads the
// library (and runs the registrations above). A plain CPython module instead of pybind11 keeps
// the build short (torch/extension.h roughly doubles the compile time of this file).
static PyModuleDef sigma_module = {PyModuleDef_HEAD_INIT, "_C",
                                   "sigma_kernels compiled ops (registered as torch.ops.sigma_kernels_ext.*)", -1,
                                   nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&sigma_module);
  if (module == nullptr) return nullptr;
#ifdef SIGMA_WITH_CUDA
  PyModule_AddObject(module, "with_cuda", Py_NewRef(Py_True));
#else
  PyModule_AddObject(module, "with_cuda", Py_NewRef(Py_False));
#endif
  return module;
}
