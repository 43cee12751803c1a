// CUDA header stand-in for the CPU harness (see ../cuda_shim.h).
#pragma once
#include "../cuda_shim.h"
