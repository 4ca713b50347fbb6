import Foundation
import Logging
import ServiceLifecycle

/// Deletes what outlived its time, driven by the store so it survives restarts: videos older than the TTL
/// (their task stays `Succeed` with "video expired"), task records older than the retention, and files no
/// task refers to (left behind by a crash).
public struct ResultSweeper: Service {
    public struct Configuration: Sendable {
        public var videoTTL: Duration
        public var taskRetention: Duration
        public var interval: Duration
        /// Files younger than this are never treated as orphans: a submit or an encode may be writing them.
        public var orphanGrace: Duration = .seconds(600)

        package init(videoTTL: Duration, taskRetention: Duration, interval: Duration, orphanGrace: Duration = .seconds(600)) {
            self.videoTTL = videoTTL
            self.taskRetention = taskRetention
            self.interval = interval
            self.orphanGrace = orphanGrace
        }
    }

    package let store: any ResultRetention
    package let media: MediaStore
    package let configuration: Configuration
    package let logger: Logger

    public init(store: any ResultRetention, media: MediaStore, configuration: Configuration, logger: Logger) {
        self.store = store
        self.media = media
        self.configuration = configuration
        self.logger = logger
    }

    public func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            await sweep()
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: configuration.interval) }
        }
    }

    public func sweep(now: Date = Date()) async {
        do {
            for task in try await store.tasksWithVideosFinished(before: now.addingTimeInterval(-configuration.videoTTL.seconds)) {
                if let video = task.result?.videoName { media.removeVideo(name: video) }
                media.removeInput(key: task.inputKey)
                // Another node's sweeper may have got there first; the files are gone either way.
                if try await store.markVideoExpired(id: task.id) {
                    logger.info("video expired", metadata: ["requestId": "\(task.id)"])
                }
            }
            for task in try await store.deleteTasks(finishedBefore: now.addingTimeInterval(-configuration.taskRetention.seconds)) {
                if let video = task.result?.videoName { media.removeVideo(name: video) }
                media.removeInput(key: task.inputKey)
            }
            try await removeOrphans(now: now)
        } catch {
            logger.error("sweep failed", metadata: ["error": "\(error)"])
        }
    }

    private func removeOrphans(now: Date) async throws {
        // A task's last frame is referenced through its input.
        let inputs = try await store.referencedFileNames()
        let referenced = inputs.union(inputs.map { MediaStore.lastInputKey(inputKey: $0) })
        for file in media.unreferencedFiles(referenced: referenced, modifiedBefore: now.addingTimeInterval(-configuration.orphanGrace.seconds)) {
            media.remove(file)
            logger.info("removed orphan file", metadata: ["file": "\(file.path)"])
        }
    }
}
