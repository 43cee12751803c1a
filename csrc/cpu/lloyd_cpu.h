// The labelers behind lloyd_native (lloyd_cpu.cpp drives the iterations and the update and
// holds the panels' bounds; lloyd_local.cpp the cluster-local tiles used from K >
// kLloydPanelMaxK; lloyd_elkan.cpp Elkan's per-center bounds, by name only).
#pragma once

#include "assign_cpu.h"

#include <vector>

namespace kmgan_ext {
namespace cpu {

// Relative margins of the bounds: far above the float64 rounding of the quantities bounded
// (and of the reference's own float64 distances, so a bound's strict test also orders them).
constexpr double kLloydUp = 1.0 + 1e-9, kLloydDown = 1.0 - 1e-9;

// lloyd_native keeps Yinyang bounds on the 16-center panels (lloyd_cpu.cpp) up to this many
// centers and labels by cluster-local tiles (lloyd_local.cpp) above.
constexpr int64_t kLloydPanelMaxK = 16;

// Elkan's bounds (Elkan 2003, "Using the triangle inequality to accelerate k-means"): one
// lower bound per (row, center), lloyd_elkan.cpp explains how they stay exact.
class ElkanLabels {
 public:
  // Bytes of bounds it keeps for (n, k): the caller refuses it above its memory cap.
  static int64_t bound_bytes(int64_t n, int64_t k) { return n * (k + (k + 5) / 10) * 4; }

  ElkanLabels(const float* x, int64_t n, int64_t d, int64_t k);
  // labels against centers c (K, d), finite; dist2 (n,) when not null: the exact distance to
  // the label (exact_dist2_avx2, as km.assign's single-candidate rows).
  void assign(const float* c, float* dist2);
  // After the update: drift[q] >= ||c_q(new) - c_q(old)|| for the centers of the next assign.
  void moved(const std::vector<double>& drift);
  const std::vector<int64_t>& labels() const { return labels_; }

 private:
  void first_pass(const float* c, float* dist2);
  void make_groups(const float* c);
  // Row i's bounds from row (K, original order; bounds now), stored against the drift so far
  // (slow, gslow; null: none yet), the group minimums excluding the label.
  void store_row(int64_t i, const float* row, int64_t label, const double* slow, const double* gslow);
  const float* x_;
  int64_t n_, d_, k_;
  std::vector<int64_t> labels_;
  // (n, k) lower bounds on ||x_i - c_j||, plus S_j when written: 28 MB at N = 70,000, K = 100.
  // From empty_output (output_pool.cpp: huge pages where granted, and a later call reuses the
  // block mapped), uninitialised as the first pass writes every bound: a std::vector's zero
  // fill and page faults were ~4 ms of that pass (23.5 -> 19.5 ms, issue 15).
  Tensor lb_store_;
  float* lb_;
  std::vector<double> u_;     // (n,) upper bound on ||x_i - c_label||, minus S_label when written
  // Groups of centers (Ding et al. 2015's Yinyang): close initial centers share one, and a
  // row skips a whole group while its group bound exceeds u. lb_ rows are in group order.
  int64_t groups_ = 0;
  std::vector<int64_t> perm_, pos_, group_of_, gstart_;  // perm_[p]: the center at position p
  std::vector<float> gl_;     // (n, groups) min over the group's centers j != label of lb
  std::vector<std::vector<double>> gtravel_;  // gtravel_[t][g]: the group's largest drift, summed
  std::vector<std::vector<double>> travel_;  // travel_[t][q] = S_q(t): drift of q summed over updates < t
};

// Cluster-local labels (lloyd_local.cpp): the rows of each cluster against only the centers
// that could be nearer than their own (within twice the cluster's radius), as one GEMM tile;
// one upper bound per row (Hamerly's test), none per (row, center).
class LocalLabels {
 public:
  LocalLabels(const float* x, int64_t n, int64_t d, int64_t k);
  // Labels against centers c (K, d), finite; dist2 (n,) when not null: the exact distance to
  // the label.
  void assign(const float* c, float* dist2);
  // After the update: drift[q] >= ||c_q(new) - c_q(old)||.
  void moved(const std::vector<double>& drift);
  const std::vector<int64_t>& labels() const { return labels_; }

 private:
  // (K, K): lower bounds on half the centers' pairwise distances, from the shifted centers cs
  // (shifted_centers_f32), cs packed (pack_panels), their bias ||c - s||^2 padded with +inf to
  // whole panels, and cmax.
  std::vector<double> half_distances(const std::vector<float>& cs, const std::vector<float>& packed,
                                     const std::vector<float>& pbias, double cmax) const;
  const float* x_;
  int64_t n_, d_, k_;
  std::vector<int64_t> labels_;
  std::vector<double> u_;       // (n,) >= ||x_i - c_label|| at the last assign
  std::vector<double> radius_;  // (k,) >= the largest distance to c_a of a's rows at the last assign
  std::vector<double> drift_;   // (k,) the update's drift since
  bool first_ = true;
};

}  // namespace cpu
}  // namespace kmgan_ext
