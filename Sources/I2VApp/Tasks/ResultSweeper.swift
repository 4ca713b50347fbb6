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
        public var inputsDirectory: URL
        public var videosDirectory: URL
        /// Files younger than this are never treated as orphans: a submit or an encode may be writing them.
        public var orphanGrace: Duration = .seconds(600)
    }

    let store: any TaskStore
    let configuration: Configuration
    let logger: Logger

    public init(store: any TaskStore, configuration: Configuration, logger: Logger) {
        self.store = store
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
                if let video = task.result?.videoName {
                    remove(configuration.videosDirectory.appending(path: "\(video).mp4"))
                }
                remove(URL(fileURLWithPath: task.inputPath))
                try await store.markVideoExpired(id: task.id)
                logger.info("video expired", metadata: ["requestId": "\(task.id)"])
            }
            for task in try await store.deleteTasks(finishedBefore: now.addingTimeInterval(-configuration.taskRetention.seconds)) {
                if let video = task.result?.videoName {
                    remove(configuration.videosDirectory.appending(path: "\(video).mp4"))
                }
                remove(URL(fileURLWithPath: task.inputPath))
            }
            try await removeOrphans(now: now)
        } catch {
            logger.error("sweep failed", metadata: ["error": "\(error)"])
        }
    }

    private func removeOrphans(now: Date) async throws {
        let referenced = try await store.referencedFileNames()
        let cutoff = now.addingTimeInterval(-configuration.orphanGrace.seconds)
        for directory in [configuration.inputsDirectory, configuration.videosDirectory] {
            let files = (try? FileManager.default.contentsOfDirectory(
                at: directory,
                includingPropertiesForKeys: [.contentModificationDateKey],
                options: [.skipsSubdirectoryDescendants]
            )) ?? []
            for file in files where !referenced.contains(file.lastPathComponent) {
                let modified = (try? file.resourceValues(forKeys: [.contentModificationDateKey]).contentModificationDate) ?? now
                if modified < cutoff {
                    remove(file)
                    logger.info("removed orphan file", metadata: ["file": "\(file.path)"])
                }
            }
        }
    }

    private func remove(_ url: URL) {
        try? FileManager.default.removeItem(at: url)
    }
}
