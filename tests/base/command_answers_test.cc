// The answers of slim-train's one-shot commands: what one side writes the other reads back
// equal, and a malformed answer is an internal error that quotes it.
#include "base/command_answers.h"

#include <gtest/gtest.h>

#include "base/errors.h"

namespace slim {
namespace {

TEST(CommandAnswers, AdmissionPlanRoundTrips) {
  AdmissionPlan p;
  p.quota_bytes = 3644814;
  p.min_quota_bytes = 990393;
  p.feasible = true;
  p.chunk_size = 128;
  p.mode = StartStateMode::kBoundaries;
  p.predicted_peak_bytes = 2466426;
  p.est_step_seconds = 0.24620327776494427;
  p.full_backprop_peak_bytes = 9630212;
  EXPECT_EQ(AdmissionPlanFromJson(AdmissionPlanToJson(p)), p);
  AdmissionPlan infeasible;
  infeasible.quota_bytes = 1000;
  infeasible.min_quota_bytes = 990393;
  EXPECT_EQ(AdmissionPlanFromJson(AdmissionPlanToJson(infeasible)), infeasible);
  AdmissionPlan needs_calibration;
  needs_calibration.calibration_bytes = 15233032;
  EXPECT_EQ(AdmissionPlanFromJson(AdmissionPlanToJson(needs_calibration)), needs_calibration);
}

TEST(CommandAnswers, ModelSummaryAndDevicesRoundTrip) {
  ModelSummary s;
  s.config = {{"d_model", "128"}, {"feature_map", "favor+"}};
  s.parameters = 856832;
  const ModelSummary back = ModelSummaryFromJson(ModelSummaryToJson(s));
  EXPECT_EQ(back.config, s.config);
  EXPECT_EQ(back.parameters, s.parameters);

  const std::vector<DeviceInfo> devices{{"cpu", "cpu", "system memory", 25276157952, 24023441408, ""},
                                        {"cuda:0", "cuda", "NVIDIA \"H100\"", 85899345920, 1, "00000000:65:00.0"}};
  const std::vector<DeviceInfo> read = DevicesFromJson(DevicesToJson(devices));
  ASSERT_EQ(read.size(), 2u);
  EXPECT_EQ(read[1].name, "cuda:0");
  EXPECT_EQ(read[1].description, "NVIDIA \"H100\"");
  EXPECT_EQ(read[0].total_bytes, 25276157952);
  EXPECT_EQ(read[1].free_bytes, 1);
  EXPECT_EQ(read[0].pci_bus_id, "");
  EXPECT_EQ(read[1].pci_bus_id, "00000000:65:00.0");

  const WorkerFootprint footprint{"cuda:1", 536870912, "measured \"somehow\""};
  const WorkerFootprint footprint_read = WorkerFootprintFromJson(WorkerFootprintToJson(footprint));
  EXPECT_EQ(footprint_read.device, "cuda:1");
  EXPECT_EQ(footprint_read.bytes, 536870912);
  EXPECT_EQ(footprint_read.method, footprint.method);
}

TEST(CommandAnswers, MalformedAnswersAreInternalErrorsNamingWhatIsWrong) {
  const std::string good = AdmissionPlanToJson(AdmissionPlan{});
  for (const std::string& bad :
       {std::string("not json"), std::string("[]"), std::string("{}"),
        good.substr(0, good.size() - 1),  // truncated
        std::string(R"({"calibration_bytes":0,"chunk_size":1.5,"est_step_seconds":0,"feasible":true,"full_backprop_peak_bytes":1,"min_quota_bytes":1,"mode":"subtract","predicted_peak_bytes":1,"quota_bytes":1})"),
        std::string(R"({"calibration_bytes":0,"chunk_size":1,"est_step_seconds":0,"feasible":true,"full_backprop_peak_bytes":1,"min_quota_bytes":1,"mode":"sideways","predicted_peak_bytes":1,"quota_bytes":1})"),
        std::string(R"({"calibration_bytes":0,"chunk_size":1,"est_step_seconds":0,"feasible":"yes","full_backprop_peak_bytes":1,"min_quota_bytes":1,"mode":"subtract","predicted_peak_bytes":1,"quota_bytes":1})"),
        std::string(R"({"calibration_bytes":0,"chunk_size":-1,"est_step_seconds":0,"feasible":true,"full_backprop_peak_bytes":1,"min_quota_bytes":1,"mode":"subtract","predicted_peak_bytes":1,"quota_bytes":1})")}) {
    try {
      AdmissionPlanFromJson(bad);
      ADD_FAILURE() << "accepted: " << bad;
    } catch (const EngineError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInternal) << bad;
      EXPECT_NE(std::string(e.what()).find("malformed a plan"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(ModelSummaryFromJson(R"({"config":{"d_model":128},"parameters":1})"), EngineError);
  EXPECT_THROW(DevicesFromJson(R"([{"name":"cpu"}])"), EngineError);
  EXPECT_THROW(WorkerFootprintFromJson(R"({"bytes":-1,"device":"cpu","method":"x"})"), EngineError);
  EXPECT_THROW(WorkerFootprintFromJson(R"({"device":"cpu","method":"x"})"), EngineError);
}

}  // namespace
}  // namespace slim
