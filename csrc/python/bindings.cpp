// pybind11 bindings: the private extension module spaedge._runtime.
// The public Python face is spaedge/runtime.py; keep this layer thin.
#include <cstdint>
#include <sstream>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "runtime/json.h"
#include "runtime/limits.h"
#include "runtime/task.h"
#include "spaedge/bundle.h"
#include "spaedge/runtime.h"

namespace py = pybind11;

namespace {

// spaedge::Error -> spaedge.errors.BundleError (a ValueError), shared with the
// Python toolchain so callers catch one class for every bundle problem.
PyObject* g_bundle_error = nullptr;

py::dict info_dict(const spaedge::TaskInfo& i) {
  py::dict d;
  d["name"] = i.name;
  d["path"] = i.path;
  d["method"] = i.method;
  d["info"] = i.info;
  d["labels"] = i.labels;
  d["channels"] = i.channels;
  d["height"] = i.height;
  d["width"] = i.width;
  d["mean"] = i.mean;
  d["std"] = i.std;
  d["classes"] = i.classes;
  d["bundle_bytes"] = i.bundle_bytes;
  d["macs"] = i.macs;
  d["params"] = i.params;
  return d;
}

// A JSON value the runtime's parser accepted (depth-limited) as Python objects.
py::object from_json(const spaedge::json::Value& v) {
  namespace json = spaedge::json;
  switch (v.type) {
    case json::Type::Null:
      return py::none();
    case json::Type::Bool:
      return py::bool_(v.boolean);
    case json::Type::Number:
      if (v.is_integer) return py::int_(v.integer);
      return py::float_(v.number);
    case json::Type::String:
      return py::str(v.string);
    case json::Type::Array: {
      py::list l;
      for (const auto& e : v.array) l.append(from_json(e));
      return l;
    }
    case json::Type::Object: {
      py::dict d;
      for (const auto& kv : v.object) d[py::str(kv.first)] = from_json(kv.second);
      return d;
    }
  }
  return py::none();
}

py::dict summary_dict(const spaedge::BundleSummary& s) {
  py::dict d;
  d["path"] = s.path;
  d["format"] = s.format;
  d["version"] = s.version;
  d["content_hash"] = s.content_hash;
  d["hash_verified"] = s.hash_verified;
  d["file_bytes"] = s.file_bytes;
  d["header_bytes"] = s.header_bytes;
  d["metadata"] = s.metadata;
  py::list tensors;
  for (const auto& t : s.tensors)
    tensors.append(
        py::make_tuple(t.name, spaedge::dtype_name(t.dtype), py::tuple(py::cast(t.shape))));
  d["tensors"] = tensors;
  d["numbers"] = s.numbers;
  if (s.format == "spaedge-base") {
    d["model"] = s.model;
    d["input_channels"] = s.input_channels;
    d["nodes"] = s.nodes;
    d["convs"] = s.convs;
  } else {
    d["task"] = s.task;
    d["method"] = s.method;
    d["base_hash"] = s.base_hash;
    d["labels"] = s.labels;
    d["input"] =
        py::dict(py::arg("channels") = s.channels, py::arg("height") = s.height,
                 py::arg("width") = s.width, py::arg("mean") = s.mean, py::arg("std") = s.std);
    d["info"] = from_json(spaedge::json::parse(s.info, s.path + ": metadata 'info'"));
    d["shared_adapters"] = s.shared_adapters;
  }
  return d;
}

py::list words(const char* s) {
  py::list l;
  std::istringstream in(s);
  for (std::string w; in >> w;) l.append(w);
  return l;
}

}  // namespace

PYBIND11_MODULE(_runtime, m) {
  m.doc() = "spaedge C++ runtime (private; use spaedge.runtime.Runtime)";

  try {
    py::object cls = py::module_::import("spaedge.errors").attr("BundleError");
    g_bundle_error = cls.release().ptr();
  } catch (py::error_already_set&) {
    PyErr_Clear();
    g_bundle_error = PyErr_NewException("spaedge._runtime.BundleError", PyExc_ValueError, nullptr);
  }
  m.attr("BundleError") = py::handle(g_bundle_error);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const spaedge::Error& e) {
      PyErr_SetString(g_bundle_error, e.what());
    }
  });

  m.def(
      "inspect_bundle",
      [](const std::string& path, bool verify) {
        spaedge::BundleSummary s;
        {
          py::gil_scoped_release release;
          s = spaedge::inspect_bundle(path, verify);
        }
        return summary_dict(s);
      },
      py::arg("path"), py::arg("verify") = true,
      "A bundle's header and metadata checked by the runtime's reader without loading its data "
      "(spaedge.cli.info); verify streams the data through the content hash.");

  // The runtime's limits and lists, for the toolchain to read instead of restating.
  m.attr("FORMAT_VERSION") = spaedge::kFormatVersion;
  py::dict limits;
  limits["max_header_bytes"] = spaedge::kMaxHeaderBytes;
  limits["max_input_channels"] = spaedge::kMaxInputChannels;
  limits["max_input_side"] = spaedge::kMaxInputSide;
  limits["max_channels"] = spaedge::kMaxChannels;
  limits["max_kernel"] = spaedge::kMaxKernel;
  limits["max_rank"] = spaedge::kMaxRank;
  limits["max_prototypes"] = spaedge::kMaxPrototypes;
  limits["max_classes"] = spaedge::kMaxClasses;
  limits["max_arena_bytes"] = spaedge::kMaxArenaBytes;
  m.attr("LIMITS") = limits;
  py::list fams;
  for (const spaedge::families::Info& f : spaedge::families::list()) {
    py::dict d;
    d["name"] = f.name;
    d["conv_tensors"] = words(f.conv_tensors);
    d["model_tensors"] = words(f.model_tensors);
    d["metadata"] = f.metadata;
    fams.append(d);
  }
  m.attr("FAMILIES") = fams;
  m.def(
      "check_task_metadata",
      [](const std::map<std::string, std::string>& meta, const std::string& where) {
        const spaedge::TaskMetadata t = spaedge::read_task_metadata(meta, where);
        py::dict d;
        d["rank"] = t.rank;
        return d;
      },
      py::arg("metadata"), py::arg("where"),
      "A task bundle's metadata checked as the runtime checks it when loading (without a base): "
      "raises BundleError naming `where` and the field; returns {'rank': metadata 'rank' or 0}.");

  // Every method takes the Runtime's mutex, which a run() may hold for a while:
  // never wait for it while holding the GIL. Results are converted to Python
  // objects after the guard has re-acquired the GIL.
  using nogil = py::call_guard<py::gil_scoped_release>;
  using spaedge::Runtime;
  py::class_<Runtime>(m, "Runtime")
      .def(py::init([](const std::string& base, int threads) {
             py::gil_scoped_release release;
             return new Runtime(base, threads);
           }),
           py::arg("base_path"), py::arg("threads") = 0)
      .def(
          "load_task",
          [](Runtime& r, const std::string& path) {
            py::gil_scoped_release release;
            return r.load_task(path);
          },
          py::arg("path"))
      .def(
          "switch_to",
          [](Runtime& r, const std::string& name) {
            py::gil_scoped_release release;
            return r.switch_to(name);
          },
          py::arg("name"))
      .def("unload_task", &Runtime::unload_task, py::arg("name"), nogil())
      .def("has_task", &Runtime::has_task, py::arg("name"), nogil())
      .def(
          "run",
          [](Runtime& r, py::array_t<float, py::array::c_style> input, int batch,
             py::array_t<float, py::array::c_style> logits) {
            // Both arrays are held by this frame while the GIL is released.
            const float* in = input.data();
            float* out = logits.mutable_data();
            const size_t in_n = size_t(input.size()), out_n = size_t(logits.size());
            // The kernels load floats directly: a misaligned view (e.g. into a
            // byte buffer) would be undefined behaviour, so refuse it here.
            if (reinterpret_cast<std::uintptr_t>(in) % alignof(float) != 0 ||
                reinterpret_cast<std::uintptr_t>(out) % alignof(float) != 0)
              throw py::value_error("run: input and logits must be 4-byte aligned float32 arrays");
            py::gil_scoped_release release;
            r.run(in, in_n, batch, out, out_n);
          },
          py::arg("input").noconvert(), py::arg("batch"), py::arg("logits").noconvert())
      .def("tasks", &Runtime::tasks, nogil())
      .def(
          "task_info",
          [](const Runtime& r, const std::string& name) {
            spaedge::TaskInfo i;
            {
              py::gil_scoped_release release;
              i = r.task_info(name);
            }
            return info_dict(i);
          },
          py::arg("name"))
      .def("active_task", &Runtime::active_task, nogil())
      .def("isa", &Runtime::isa, nogil())
      .def("isa_note", &Runtime::isa_note, nogil())
      .def("threads", &Runtime::threads, nogil())
      .def("set_threads", &Runtime::set_threads, py::arg("threads"), nogil())
      .def("mode", &Runtime::mode, nogil())
      .def("set_mode", &Runtime::set_mode, py::arg("mode"), nogil())
      .def("base_path", &Runtime::base_path, nogil())
      .def("base_model", &Runtime::base_model, nogil())
      .def("base_hash", &Runtime::base_hash, nogil())
      .def("working_set_bytes", &Runtime::working_set_bytes, nogil());
}
