// A planted layering fault for the check's own test: formats/ may not know converter/.
#pragma once
#include "converter/model_config.h"
