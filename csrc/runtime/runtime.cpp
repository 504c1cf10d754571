// spaedge::Runtime: the public face over BaseModel, Task and the executor.
#include "spaedge/runtime.h"

#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <thread>

#include "runtime/execute.h"
#include "runtime/model.h"

namespace spaedge {

namespace {
constexpr int kMaxThreads = 1024;

int resolve_threads(int threads) {
  if (threads < 0 || threads > kMaxThreads)
    throw Error("threads must be in [0, " + std::to_string(kMaxThreads) +
                "] (0 = all hardware threads), got " + std::to_string(threads));
  if (threads == 0) {
    unsigned hw = std::thread::hardware_concurrency();
    threads = hw == 0 ? 1 : int(std::min<unsigned>(hw, kMaxThreads));
  }
  return threads;
}
}  // namespace

struct Runtime::Impl {
  mutable std::mutex mu;
  std::unique_ptr<BaseModel> base;
  const kernels::KernelTable* kt = nullptr;
  int threads = 1;
  ApplyMode mode = ApplyMode::Merged;
  std::map<std::string, std::unique_ptr<Task>> tasks;
  std::vector<std::string> order;
  const Task* active = nullptr;
  Applied applied;
  Workers workers;  // helpers for task application and the kernels (declared last: joined first)

  const Task& find(const std::string& name) const {
    auto it = tasks.find(name);
    if (it == tasks.end()) {
      std::string known;
      for (const auto& n : order) known += (known.empty() ? "" : ", ") + n;
      throw Error("no task named '" + name +
                  "' is loaded (loaded: " + (known.empty() ? std::string("none") : known) + ")");
    }
    return *it->second;
  }

  double apply(const Task& t) {
    auto t0 = std::chrono::steady_clock::now();
    active = nullptr;
    apply_task(*base, t, *kt, threads, mode, workers, applied);
    active = &t;
    auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::milli>(t1 - t0).count();
  }
};

namespace {

// Logits are returned finite or not at all: an overflow inside the network
// (inputs too large for float32, or NaN passed past the input check) is an
// error naming the image, never inf/NaN handed on as an answer.
void check_logits(const Task& t, int batch, const float* logits) {
  const size_t classes = size_t(t.classes());
  for (size_t i = 0; i < size_t(batch) * classes; ++i)
    if (!std::isfinite(logits[i]))
      throw Error("run: task '" + t.name + "' produced a non-finite logit (" +
                  (std::isnan(logits[i]) ? "NaN" : "Inf") + ") for image " +
                  std::to_string(i / classes) +
                  " of the batch: its values overflow float32 in the network (check the input "
                  "is normalised, finite and of ordinary magnitude)");
}

}  // namespace

Runtime::Runtime(const std::string& base_path, int threads) : impl_(std::make_unique<Impl>()) {
  impl_->threads = resolve_threads(threads);
  impl_->base = std::make_unique<BaseModel>(base_path);
  impl_->kt = &kernels::active();
}

Runtime::~Runtime() = default;

std::string Runtime::load_task(const std::string& path) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl& m = *impl_;
  auto task = std::make_unique<Task>(*m.base, path);  // validates everything
  // Apply before storing, so a task that cannot be applied (e.g. out of
  // memory) leaves the runtime exactly as it was.
  const Task* previous = m.active;
  try {
    m.apply(*task);
  } catch (...) {
    m.active = nullptr;
    m.applied.task = nullptr;
    if (previous) {
      try {
        m.apply(*previous);
      } catch (...) {
        m.active = nullptr;
        m.applied.task = nullptr;
      }
    }
    throw;
  }
  const std::string name = task->name;
  auto it = m.tasks.find(name);
  if (it != m.tasks.end()) {
    it->second = std::move(task);  // the object keeps its address: still active
  } else {
    m.tasks.emplace(name, std::move(task));
    m.order.push_back(name);
  }
  return name;
}

double Runtime::switch_to(const std::string& name) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->apply(impl_->find(name));
}

void Runtime::unload_task(const std::string& name) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl& m = *impl_;
  const Task& t = m.find(name);
  if (m.active == &t) {
    m.active = nullptr;
    m.applied.task = nullptr;
  }
  m.tasks.erase(name);
  for (size_t i = 0; i < m.order.size(); ++i)
    if (m.order[i] == name) {
      m.order.erase(m.order.begin() + long(i));
      break;
    }
}

void Runtime::run(const float* input_nchw, int batch, float* logits) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl& m = *impl_;
  if (!m.active) throw Error("run: no active task (load_task or switch_to first)");
  if (batch < 1) throw Error("run: batch must be >= 1, got " + std::to_string(batch));
  if (!input_nchw || !logits) throw Error("run: null input or logits pointer");
  execute(m.applied, m.threads, m.workers, input_nchw, batch, logits);
  check_logits(*m.active, batch, logits);
}

void Runtime::run(const float* input_nchw, size_t input_floats, int batch, float* logits,
                  size_t logits_floats) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl& m = *impl_;
  if (!m.active) throw Error("run: no active task (load_task or switch_to first)");
  if (batch < 1) throw Error("run: batch must be >= 1, got " + std::to_string(batch));
  if (!input_nchw || !logits) throw Error("run: null input or logits pointer");
  const Task& t = *m.active;
  const size_t img = size_t(t.channels) * size_t(t.height) * size_t(t.width);
  if (input_floats != img * size_t(batch))
    throw Error("run: input has " + std::to_string(input_floats) + " floats, task '" + t.name +
                "' needs " + std::to_string(batch) + " x " + std::to_string(t.channels) + " x " +
                std::to_string(t.height) + " x " + std::to_string(t.width));
  if (logits_floats < size_t(t.classes()) * size_t(batch))
    throw Error("run: logits buffer has " + std::to_string(logits_floats) + " floats, task '" +
                t.name + "' writes " + std::to_string(batch) + " x " + std::to_string(t.classes()));
  execute(m.applied, m.threads, m.workers, input_nchw, batch, logits);
  check_logits(*m.active, batch, logits);
}

std::vector<std::string> Runtime::tasks() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->order;
}

bool Runtime::has_task(const std::string& name) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->tasks.count(name) != 0;
}

TaskInfo Runtime::task_info(const std::string& name) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  const Task& t = impl_->find(name);
  TaskInfo i;
  i.name = t.name;
  i.path = t.path;
  i.method = t.method;
  i.info = t.info;
  i.labels = t.labels;
  i.channels = t.channels;
  i.height = t.height;
  i.width = t.width;
  i.mean = t.mean;
  i.std = t.std;
  i.classes = t.classes();
  i.bundle_bytes = t.bundle_bytes;
  i.macs = t.macs;
  i.params = t.task_params;
  return i;
}

std::string Runtime::active_task() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->active ? impl_->active->name : std::string();
}

std::string Runtime::isa() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->kt->isa;
}

std::string Runtime::isa_note() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  const char* e = kernels::dispatch_error();
  return e ? std::string(e) : std::string();
}

int Runtime::threads() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->threads;
}

void Runtime::set_threads(int threads) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl& m = *impl_;
  m.threads = resolve_threads(threads);
  if (m.active) size_scratch(m.applied, m.threads);
}

std::string Runtime::mode() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->mode == ApplyMode::Merged ? "merged" : "lowrank";
}

double Runtime::set_mode(const std::string& mode) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl& m = *impl_;
  if (mode == "merged")
    m.mode = ApplyMode::Merged;
  else if (mode == "lowrank" && m.base->int8())
    throw Error(
        "mode 'lowrank' has no int8 kernel: an int8 base runs every task merged "
        "(docs/int8.md (c)); use mode 'merged' or an fp32 base");
  else if (mode == "lowrank")
    m.mode = ApplyMode::FusedLowRank;
  else
    throw Error("mode must be 'merged' or 'lowrank', got '" + mode + "'");
  return m.active ? m.apply(*m.active) : 0.0;
}

std::string Runtime::base_path() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->base->path();
}

std::string Runtime::base_model() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->base->model_name();
}

std::string Runtime::base_hash() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->base->content_hash();
}

size_t Runtime::working_set_bytes() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  const Applied& a = impl_->applied;
  if (!impl_->active) return 0;
  return (a.packed.size() + a.arena.size() + a.scratch.size() + a.ohwi.size() + a.bwork.size() +
          a.vec.size() + a.qin.size()) *
         sizeof(float);
}

}  // namespace spaedge
