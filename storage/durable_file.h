// storage/durable_file.h — the commit protocol of DESIGN.md §6 (write name.tmp, fsync,
// rename, fsync the directory) and secure removal, shared by datasets and checkpoints.
#pragma once

#include <filesystem>
#include <string_view>
#include <vector>

namespace lethe::storage {

// The temporary name a file is written under before it is committed: "<path>.tmp".
[[nodiscard]] std::filesystem::path temp_path_for(const std::filesystem::path& path);

// Flushes a file's data and metadata to stable storage.
void fsync_file(const std::filesystem::path& path);
// Flushes a directory's entries (a rename or unlink in it) to stable storage.
void fsync_directory(const std::filesystem::path& dir);

// Atomically replaces `target` by `written`: fsync(written), rename, fsync(directory).
// A crash at any point leaves either the old or the new `target`, never a torn one. Refuses
// (StorageError kRefused, before anything is renamed) a `target` that exists and is not a regular
// file: a device node, FIFO, socket, directory or symlink is never replaced by a commit.
void commit_file(const std::filesystem::path& written, const std::filesystem::path& target);

// How a command treats a regular file already at an output path the operator named.
enum class ExistingOutput { kRefuse, kReplace };

// Checks an output path an operator named (`lethe ingest --out`, `lethe pretrain`'s backbone) before
// any work: StorageError (kRefused) naming the path and what to do when it, or its temporary
// (temp_path_for), exists and is not a regular file (device, FIFO, socket, directory, symlink), or
// when it is an existing regular file and `existing` is kRefuse (`force_flag` allows replacing it).
void check_output_path(const std::filesystem::path& path, ExistingOutput existing, std::string_view force_flag);

// The file `path` names with every symlink resolved, so that a command rewriting or erasing a
// file works on the real one and leaves no copy behind a link. StorageError (kNotFound) naming the
// path when it does not exist.
[[nodiscard]] std::filesystem::path resolve_data_file(const std::filesystem::path& path);

// Writes `content` to "<path>.tmp" and commits it to `path` (commit_file). StorageError naming the
// file when a write fails (e.g. a full disk); the old `path`, if any, is left as it was.
void write_file_durably(const std::filesystem::path& path, std::string_view content);

// Overwrites every byte of `path` with zeros, fsyncs, unlinks it and fsyncs its
// directory, so that its content is gone from the file system's view of the disk.
void shred_file(const std::filesystem::path& path);
// The same for several files, with one fsync per directory for their unlinks.
void shred_files(const std::vector<std::filesystem::path>& paths);

// Tests only: faults at the commit boundary, where a full disk or a failing write surfaces. Off
// unless a test arms it (one relaxed atomic load per commit otherwise).
namespace fault_injection {
// The `nth` commit_file from now (1: the next) throws StorageError as a full disk would, before
// anything is renamed; 0 disarms. Process-wide.
void fail_nth_commit(int nth);
// Called by commit_file.
void on_commit(const std::filesystem::path& target);
}  // namespace fault_injection

}  // namespace lethe::storage
