// SqliteStore against the Store contract: ids, job/event sequencing, pagination, datasets and
// models, argument errors, durability across reopening, concurrent updates, reads beside a
// write in progress, schema versions.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "server/jobs/sqlite_store.h"

namespace slim::server {
namespace {

using v1::JobState;

// A fresh directory per test under the GoogleTest temp dir.
std::string FreshDir() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) /
                                    absl::StrCat("store_test_", info->test_suite_name(), "_", info->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

std::unique_ptr<SqliteStore> OpenOrDie(const std::string& path) {
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(path);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(store).value() : nullptr;
}

v1::Job MakeJob(const std::string& id, JobState state) {
  v1::Job job;
  job.set_id(id);
  job.set_display_name(absl::StrCat("name of ", id));
  job.set_state(state);
  job.mutable_spec()->mutable_training()->set_seq_len(64);
  return job;
}

v1::JobEvent MakeEvent(const std::string& kind, JobState state) {
  v1::JobEvent event;
  event.set_kind(kind);
  event.set_state(state);
  event.set_message(absl::StrCat(kind, " happened"));
  return event;
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = FreshDir();
    path_ = dir_ + "/slim.db";
    store_ = OpenOrDie(path_);
    ASSERT_NE(store_, nullptr);
  }

  // Creates a job with a fresh "job" id in `state`; returns its id.
  std::string AddJob(JobState state) {
    absl::StatusOr<std::string> id = store_->NewId("job");
    EXPECT_TRUE(id.ok()) << id.status();
    absl::StatusOr<v1::Job> job = store_->CreateJob(MakeJob(*id, state), MakeEvent("queued", state));
    EXPECT_TRUE(job.ok()) << job.status();
    return *id;
  }

  std::string dir_;
  std::string path_;
  std::unique_ptr<SqliteStore> store_;
};

TEST_F(StoreTest, IdsAreUniqueAndIncreasingPerPrefix) {
  EXPECT_EQ(*store_->NewId("job"), "job-000001");
  EXPECT_EQ(*store_->NewId("job"), "job-000002");
  EXPECT_EQ(*store_->NewId("ds"), "ds-000001");  // counters are per prefix
  EXPECT_EQ(*store_->NewId("job"), "job-000003");
  std::set<std::string> seen;
  std::string previous = "job-000003";
  for (int i = 0; i < 20; ++i) {
    const std::string id = *store_->NewId("job");
    EXPECT_TRUE(seen.insert(id).second) << id;
    EXPECT_LT(previous, id);  // zero padding keeps text order = numeric order below 10^6
    previous = id;
  }
  EXPECT_EQ(store_->NewId("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreTest, CreateGetUpdateNumbersEventsWithoutGaps) {
  v1::Job job = MakeJob("job-a", v1::JOB_STATE_QUEUED);
  job.set_last_sequence(42);  // ignored: the store numbers events
  v1::JobEvent first = MakeEvent("queued", v1::JOB_STATE_QUEUED);
  first.set_sequence(99);
  absl::StatusOr<v1::Job> created = store_->CreateJob(job, first);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->last_sequence(), 1);

  absl::StatusOr<v1::Job> got = store_->GetJob("job-a");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->display_name(), "name of job-a");
  EXPECT_EQ(got->spec().training().seq_len(), 64);
  EXPECT_EQ(got->last_sequence(), 1);

  for (int i = 2; i <= 6; ++i) {
    v1::Job update = *got;
    update.set_state(v1::JOB_STATE_RUNNING);
    update.mutable_progress()->set_step(i);
    update.set_last_sequence(0);  // ignored
    absl::StatusOr<v1::Job> stored = store_->UpdateJob(update, MakeEvent("progress", v1::JOB_STATE_RUNNING));
    ASSERT_TRUE(stored.ok()) << stored.status();
    EXPECT_EQ(stored->last_sequence(), i);
  }
  got = store_->GetJob("job-a");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->last_sequence(), 6);
  EXPECT_EQ(got->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(got->progress().step(), 6);

  absl::StatusOr<std::vector<v1::JobEvent>> events = store_->ListEvents("job-a", 0, 100);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ((*events)[i].sequence(), i + 1);
  EXPECT_EQ((*events)[0].kind(), "queued");
  EXPECT_EQ((*events)[5].kind(), "progress");

  // A stale snapshot saved without an event cannot move last_sequence back.
  v1::Job stale = *created;
  stale.mutable_progress()->set_tokens(1234);
  ASSERT_TRUE(store_->SaveJob(stale).ok());
  got = store_->GetJob("job-a");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->progress().tokens(), 1234);
  EXPECT_EQ(got->last_sequence(), 6);
  absl::StatusOr<v1::Job> next = store_->UpdateJob(*got, MakeEvent("eval", v1::JOB_STATE_RUNNING));
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->last_sequence(), 7);
}

TEST_F(StoreTest, DuplicateAndUnknownJobs) {
  ASSERT_TRUE(
      store_->CreateJob(MakeJob("job-a", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  EXPECT_EQ(store_->CreateJob(MakeJob("job-a", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED))
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
  // The failed insert left nothing behind: still exactly one event.
  EXPECT_EQ(store_->ListEvents("job-a", 0, 10)->size(), 1u);

  EXPECT_EQ(store_->UpdateJob(MakeJob("job-x", v1::JOB_STATE_RUNNING), MakeEvent("started", v1::JOB_STATE_RUNNING))
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetJob("job-x").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->SaveJob(MakeJob("job-x", v1::JOB_STATE_RUNNING)).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ListEvents("job-x", 0, 10).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(
      store_->CreateJob(MakeJob("", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreTest, ListJobsPagesNewestFirst) {
  std::vector<std::string> ids;
  for (int i = 0; i < 7; ++i) ids.push_back(AddJob(i % 2 == 0 ? v1::JOB_STATE_QUEUED : v1::JOB_STATE_SUCCEEDED));

  std::vector<std::string> listed;
  std::vector<size_t> page_sizes;
  std::string token;
  for (int pages = 0; pages < 10; ++pages) {
    absl::StatusOr<Page<v1::Job>> page = store_->ListJobs({}, 3, token);
    ASSERT_TRUE(page.ok()) << page.status();
    page_sizes.push_back(page->items.size());
    for (const v1::Job& job : page->items) listed.push_back(job.id());
    token = page->next_page_token;
    if (token.empty()) break;
  }
  EXPECT_EQ(page_sizes, (std::vector<size_t>{3, 3, 1}));
  EXPECT_EQ(listed, std::vector<std::string>(ids.rbegin(), ids.rend()));

  // Exactly one full page: no next token.
  absl::StatusOr<Page<v1::Job>> all = store_->ListJobs({}, 7, "");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->items.size(), 7u);
  EXPECT_TRUE(all->next_page_token.empty());

  // Filtered by state: QUEUED are ids 0, 2, 4, 6.
  listed.clear();
  token.clear();
  page_sizes.clear();
  for (int pages = 0; pages < 10; ++pages) {
    absl::StatusOr<Page<v1::Job>> page = store_->ListJobs({v1::JOB_STATE_QUEUED}, 3, token);
    ASSERT_TRUE(page.ok()) << page.status();
    page_sizes.push_back(page->items.size());
    for (const v1::Job& job : page->items) {
      EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
      listed.push_back(job.id());
    }
    token = page->next_page_token;
    if (token.empty()) break;
  }
  EXPECT_EQ(page_sizes, (std::vector<size_t>{3, 1}));
  EXPECT_EQ(listed, (std::vector<std::string>{ids[6], ids[4], ids[2], ids[0]}));

  absl::StatusOr<Page<v1::Job>> two_states =
      store_->ListJobs({v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_QUEUED, v1::JOB_STATE_QUEUED}, 100, "");
  ASSERT_TRUE(two_states.ok());
  EXPECT_EQ(two_states->items.size(), 7u);
  absl::StatusOr<Page<v1::Job>> none = store_->ListJobs({v1::JOB_STATE_FAILED}, 100, "");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->items.empty());
  EXPECT_TRUE(none->next_page_token.empty());

  // A state change is visible to the filter (the state column follows the record).
  v1::Job job = *store_->GetJob(ids[1]);
  job.set_state(v1::JOB_STATE_FAILED);
  ASSERT_TRUE(store_->UpdateJob(job, MakeEvent("failed", v1::JOB_STATE_FAILED)).ok());
  none = store_->ListJobs({v1::JOB_STATE_FAILED}, 100, "");
  ASSERT_TRUE(none.ok());
  ASSERT_EQ(none->items.size(), 1u);
  EXPECT_EQ(none->items[0].id(), ids[1]);
}

TEST_F(StoreTest, JobsInStatesOldestFirst) {
  const std::string a = AddJob(v1::JOB_STATE_RUNNING);
  const std::string b = AddJob(v1::JOB_STATE_SUCCEEDED);
  const std::string c = AddJob(v1::JOB_STATE_QUEUED);
  const std::string d = AddJob(v1::JOB_STATE_CANCELLING);
  absl::StatusOr<std::vector<v1::Job>> jobs =
      store_->JobsInStates({v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING});
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  std::vector<std::string> ids;
  for (const v1::Job& job : *jobs) ids.push_back(job.id());
  EXPECT_EQ(ids, (std::vector<std::string>{a, c, d}));
  EXPECT_TRUE(store_->JobsInStates({})->empty());
  (void)b;
}

TEST_F(StoreTest, ListEventsAfterSequenceWithLimit) {
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  v1::Job job = *store_->GetJob(id);
  for (int i = 0; i < 9; ++i) ASSERT_TRUE(store_->UpdateJob(job, MakeEvent("progress", v1::JOB_STATE_RUNNING)).ok());
  // 10 events in all.
  absl::StatusOr<std::vector<v1::JobEvent>> events = store_->ListEvents(id, 4, 3);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 3u);
  EXPECT_EQ((*events)[0].sequence(), 5);
  EXPECT_EQ((*events)[1].sequence(), 6);
  EXPECT_EQ((*events)[2].sequence(), 7);
  events = store_->ListEvents(id, 8, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].sequence(), 10);
  EXPECT_TRUE(store_->ListEvents(id, 10, 100)->empty());
  EXPECT_EQ(store_->ListEvents(id, 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreTest, DatasetsPutGetListDelete) {
  for (int i = 1; i <= 5; ++i) {
    v1::Dataset d;
    d.set_id(absl::StrCat("ds-", i));
    d.set_name(absl::StrCat("data ", i));
    d.set_size_bytes(i * 100);
    ASSERT_TRUE(store_->PutDataset(d).ok());
  }
  v1::Dataset dup;
  dup.set_id("ds-3");
  EXPECT_EQ(store_->PutDataset(dup).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store_->GetDataset("ds-3")->name(), "data 3");  // the original is untouched
  EXPECT_EQ(store_->GetDataset("ds-3")->size_bytes(), 300);
  EXPECT_EQ(store_->GetDataset("ds-9").status().code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(store_->DeleteDataset("ds-4").ok());
  EXPECT_EQ(store_->DeleteDataset("ds-4").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetDataset("ds-4").status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<Page<v1::Dataset>> page = store_->ListDatasets(2, "");
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->items.size(), 2u);
  EXPECT_EQ(page->items[0].id(), "ds-5");
  EXPECT_EQ(page->items[1].id(), "ds-3");
  ASSERT_FALSE(page->next_page_token.empty());
  // Deleting the item the token points at does not break the token.
  ASSERT_TRUE(store_->DeleteDataset("ds-3").ok());
  page = store_->ListDatasets(2, page->next_page_token);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->items.size(), 2u);
  EXPECT_EQ(page->items[0].id(), "ds-2");
  EXPECT_EQ(page->items[1].id(), "ds-1");
  EXPECT_TRUE(page->next_page_token.empty());
}

TEST_F(StoreTest, ModelsPutGetList) {
  for (int i = 1; i <= 3; ++i) {
    v1::Model m;
    m.set_id(absl::StrCat("model-", i));
    m.set_parameters(1000 * i);
    m.set_config_json("{\"d_model\": 64}");
    ASSERT_TRUE(store_->PutModel(m).ok());
  }
  v1::Model dup;
  dup.set_id("model-2");
  EXPECT_EQ(store_->PutModel(dup).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store_->GetModel("model-2")->parameters(), 2000);
  EXPECT_EQ(store_->GetModel("model-2")->config_json(), "{\"d_model\": 64}");
  EXPECT_EQ(store_->GetModel("model-7").status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<Page<v1::Model>> page = store_->ListModels(1000, "");
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->items.size(), 3u);
  EXPECT_EQ(page->items[0].id(), "model-3");
  EXPECT_EQ(page->items[2].id(), "model-1");
  EXPECT_TRUE(page->next_page_token.empty());
}

TEST_F(StoreTest, BadPageTokensAndSizesAreInvalidArgument) {
  AddJob(v1::JOB_STATE_QUEUED);
  for (const std::string token : {"abc", "-5", "0", "12x", " 12", "+3", "1.5", "99999999999999999999"}) {
    absl::Status status = store_->ListJobs({}, 10, token).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << token;
    EXPECT_EQ(status.message(), "page_token: malformed") << token;
    EXPECT_EQ(store_->ListDatasets(10, token).status().code(), absl::StatusCode::kInvalidArgument) << token;
    EXPECT_EQ(store_->ListModels(10, token).status().code(), absl::StatusCode::kInvalidArgument) << token;
  }
  for (int size : {0, -1, 1001}) {
    absl::Status status = store_->ListJobs({}, size, "").status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << size;
    EXPECT_NE(status.message().find("page_size"), absl::string_view::npos) << status;
    EXPECT_EQ(store_->ListDatasets(size, "").status().code(), absl::StatusCode::kInvalidArgument) << size;
    EXPECT_EQ(store_->ListModels(size, "").status().code(), absl::StatusCode::kInvalidArgument) << size;
  }
  EXPECT_TRUE(store_->ListJobs({}, 1, "").ok());
  EXPECT_TRUE(store_->ListJobs({}, 1000, "").ok());
  // A well-formed token past the end is simply an empty page.
  absl::StatusOr<Page<v1::Job>> page = store_->ListJobs({}, 10, "1");
  ASSERT_TRUE(page.ok());
  EXPECT_TRUE(page->items.empty());
}

TEST_F(StoreTest, DataSurvivesReopening) {
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  v1::Job job = *store_->GetJob(id);
  job.set_state(v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(store_->UpdateJob(job, MakeEvent("started", v1::JOB_STATE_RUNNING)).ok());
  v1::Dataset dataset;
  dataset.set_id(*store_->NewId("ds"));
  dataset.set_sha256("ab12");
  ASSERT_TRUE(store_->PutDataset(dataset).ok());
  v1::Model model;
  model.set_id("model-000001");
  ASSERT_TRUE(store_->PutModel(model).ok());
  store_.reset();

  store_ = OpenOrDie(path_);
  ASSERT_NE(store_, nullptr);
  absl::StatusOr<v1::Job> reread = store_->GetJob(id);
  ASSERT_TRUE(reread.ok()) << reread.status();
  EXPECT_EQ(reread->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(reread->last_sequence(), 2);
  absl::StatusOr<std::vector<v1::JobEvent>> events = store_->ListEvents(id, 0, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].kind(), "started");
  EXPECT_EQ(store_->GetDataset(dataset.id())->sha256(), "ab12");
  EXPECT_TRUE(store_->GetModel("model-000001").ok());
  EXPECT_EQ(store_->JobsInStates({v1::JOB_STATE_RUNNING})->size(), 1u);
  // Counters persist: ids are never reissued.
  EXPECT_EQ(*store_->NewId("job"), "job-000002");
  EXPECT_EQ(*store_->NewId("ds"), "ds-000002");
  // Sequences continue.
  EXPECT_EQ(store_->UpdateJob(*reread, MakeEvent("progress", v1::JOB_STATE_RUNNING))->last_sequence(), 3);
}

TEST_F(StoreTest, ConcurrentUpdatesGetEverySequenceOnce) {
  const std::string id = AddJob(v1::JOB_STATE_RUNNING);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 50;
  std::vector<std::vector<int64_t>> returned(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      v1::Job job = MakeJob(id, v1::JOB_STATE_RUNNING);
      for (int i = 0; i < kPerThread; ++i) {
        job.mutable_progress()->set_step(i);
        v1::JobEvent event = MakeEvent("progress", v1::JOB_STATE_RUNNING);
        event.set_message(absl::StrCat(t, ":", i));
        absl::StatusOr<v1::Job> stored = store_->UpdateJob(job, event);
        EXPECT_TRUE(stored.ok()) << stored.status();
        if (stored.ok()) returned[t].push_back(stored->last_sequence());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  constexpr int kTotal = 1 + kThreads * kPerThread;  // 201 with the first event
  std::set<int64_t> all;
  for (const std::vector<int64_t>& seqs : returned) {
    EXPECT_EQ(seqs.size(), static_cast<size_t>(kPerThread));
    for (size_t i = 1; i < seqs.size(); ++i) EXPECT_LT(seqs[i - 1], seqs[i]);  // each thread's calls are ordered
    all.insert(seqs.begin(), seqs.end());
  }
  EXPECT_EQ(all.size(), static_cast<size_t>(kThreads * kPerThread));
  EXPECT_EQ(*all.begin(), 2);
  EXPECT_EQ(*all.rbegin(), kTotal);

  absl::StatusOr<std::vector<v1::JobEvent>> events = store_->ListEvents(id, 0, 1000);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), static_cast<size_t>(kTotal));
  std::set<std::string> messages;
  for (int i = 0; i < kTotal; ++i) {
    EXPECT_EQ((*events)[i].sequence(), i + 1);
    messages.insert((*events)[i].message());
  }
  EXPECT_EQ(messages.size(), static_cast<size_t>(kTotal));  // every event stored once
  EXPECT_EQ(store_->GetJob(id)->last_sequence(), kTotal);
}

// Reads have their own connection: a write that is waiting for SQLite's write lock (held here by
// another connection, as a slow commit's fsync would hold it) does not hold up reads of what is
// committed. With one shared connection every read below would wait until the write gave up.
TEST_F(StoreTest, ReadsDoNotWaitForAWriteInProgress) {
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  absl::Notification write_started, write_done;
  absl::Status written;
  std::thread writer([&] {
    write_started.Notify();
    // Waits for the lock (busy_timeout, 5 s) while holding whatever the store holds for a write.
    written = store_->UpdateJob(MakeJob(id, v1::JOB_STATE_RUNNING), MakeEvent("started", v1::JOB_STATE_RUNNING)).status();
    write_done.Notify();
  });
  write_started.WaitForNotification();
  for (int i = 0; i < 1000; ++i) {
    absl::StatusOr<v1::Job> job = store_->GetJob(id);
    ASSERT_TRUE(job.ok()) << job.status();
    EXPECT_EQ(job->state(), v1::JOB_STATE_QUEUED);  // the committed state
    absl::StatusOr<std::vector<v1::JobEvent>> events = store_->ListEvents(id, 0, 10);
    ASSERT_TRUE(events.ok()) << events.status();
    EXPECT_EQ(events->size(), 1u);
  }
  EXPECT_FALSE(write_done.HasBeenNotified()) << "the reads waited for the write";
  ASSERT_EQ(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  writer.join();
  sqlite3_close(other);
  ASSERT_TRUE(written.ok()) << written;  // the lock came free within busy_timeout
  // A committed write is visible to the next read at once.
  EXPECT_EQ(store_->GetJob(id)->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(store_->ListEvents(id, 0, 10)->size(), 2u);
}

TEST_F(StoreTest, NewerSchemaVersionIsRefused) {
  store_.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version = 2", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("schema version 2"), absl::string_view::npos) << store.status();
}

TEST(SqliteStoreOpen, SetsSchemaVersionAndWal) {
  const std::string path = FreshDir() + "/new.db";
  ASSERT_NE(OpenOrDie(path), nullptr);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  auto query = [&](const char* sql) {
    sqlite3_stmt* stmt = nullptr;
    std::string value;
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW) {
      value = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    sqlite3_finalize(stmt);
    return value;
  };
  EXPECT_EQ(query("PRAGMA user_version"), "1");
  EXPECT_EQ(query("PRAGMA journal_mode"), "wal");  // persistent in the file
  sqlite3_close(db);
}

TEST(SqliteStoreOpen, InMemoryWorks) {
  std::unique_ptr<SqliteStore> store = OpenOrDie(":memory:");
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(*store->NewId("model"), "model-000001");
  ASSERT_TRUE(store->CreateJob(MakeJob("job-m", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  EXPECT_EQ(store->GetJob("job-m")->last_sequence(), 1);
}

TEST(SqliteStoreOpen, MissingDirectoryIsInternal) {
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(FreshDir() + "/no/such/dir/slim.db");
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(store.status().message().find("no/such/dir"), absl::string_view::npos) << store.status();
}

TEST(SqliteStoreOpen, NotADatabaseIsInternal) {
  const std::string path = FreshDir() + "/junk.db";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  const std::string junk(4096, 'x');
  std::fwrite(junk.data(), 1, junk.size(), f);
  std::fclose(f);
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(store.status().message().find("not a database"), absl::string_view::npos) << store.status();
}

}  // namespace
}  // namespace slim::server
