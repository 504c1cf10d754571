// spaedge runtime: one frozen base on the device, tasks applied on demand.
//
//   spaedge::Runtime rt("base.safetensors");        // read + validate the base once
//   std::string name = rt.load_task("digits.safetensors");  // validate, keep, switch to it
//   std::vector<float> logits(rt.task_info(name).classes);
//   rt.run(image_nchw, 1, logits.data());
//   double ms = rt.switch_to("flowers");          // gather + merge + fold + pack
//
// Thread safety: every public method locks one internal std::mutex, so a
// Runtime may be shared between threads but serves one caller at a time; a
// second caller blocks until the first returns (a run() in progress finishes
// before a switch_to() starts, and vice versa). Use one Runtime per thread for
// parallel inference on different tasks.
//
// Errors: every failure throws spaedge::Error with a message that names the
// file and the field (bundles) or the argument (calls). A failed load_task
// leaves the runtime as it was.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "spaedge/error.h"

namespace spaedge {

struct TaskInfo {
  std::string name;                 // metadata 'task'
  std::string path;                 // the bundle file it was loaded from
  std::string method;               // metadata 'method', e.g. "splora"
  std::string info;                 // metadata 'info' (free-form JSON text; "{}" when absent)
  std::vector<std::string> labels;  // class names, size == classes
  int channels = 0, height = 0, width = 0;  // input size (NCHW without N)
  std::vector<float> mean, std;             // per-channel normalisation
  int classes = 0;
  size_t bundle_bytes = 0;  // size of the task bundle file
  uint64_t macs = 0;        // multiply-accumulates per image of the pruned network
  uint64_t params = 0;      // numbers stored in the task bundle (indices included)
};

class Runtime {
 public:
  // Reads the base bundle into private memory and validates it (bundle.h). threads: 0 = all
  // hardware threads.
  explicit Runtime(const std::string& base_path, int threads = 0);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Validates the task bundle against the base, keeps its parsed data, makes
  // it the active task, and returns its name. A task of the same name is replaced.
  std::string load_task(const std::string& path);
  // Applies a loaded task (gather + merge + fold + pack); returns milliseconds.
  double switch_to(const std::string& name);
  // Forgets a loaded task (if it is active, no task is active afterwards).
  void unload_task(const std::string& name);

  // Runs `batch` images, NCHW float32 already normalised, of the active task's
  // input size; writes batch x classes logits. NaN/Inf inputs are not checked:
  // they propagate and the logits are then unspecified (possibly NaN).
  void run(const float* input_nchw, int batch, float* logits);
  // The same, checked against buffer sizes (in floats): throws unless
  // input_floats == batch * channels * height * width of the active task and
  // logits_floats >= batch * classes. Bindings use this one.
  void run(const float* input_nchw, size_t input_floats, int batch, float* logits,
           size_t logits_floats);

  std::vector<std::string> tasks() const;  // names, in load order
  bool has_task(const std::string& name) const;
  TaskInfo task_info(const std::string& name) const;
  std::string active_task() const;  // "" when none
  std::string isa() const;          // kernel path in use: "scalar", "avx2", "avx512", "neon"
  std::string isa_note() const;     // non-empty when SPAEDGE_ISA asked for an unusable path
  int threads() const;
  void set_threads(int threads);  // 0 = all hardware threads

  // How low-rank adapters are applied: "merged" (default: B A is added into
  // the gathered weight at switch time, the fastest inference) or "lowrank"
  // (W' and the factors are packed separately and the kernel computes
  // conv(W', x) + B'(A' x_centre) in one pass; skips the merge at switch
  // time). Layers without factors run the same either way. Setting the mode
  // re-applies the active task; returns that switch's milliseconds (0 if none).
  std::string mode() const;
  double set_mode(const std::string& mode);

  std::string base_path() const;
  std::string base_model() const;  // metadata 'model' of the base
  std::string base_hash() const;   // content_hash of the base

  // Bytes of packed weights + activation arena + scratch of the active task.
  size_t working_set_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spaedge
