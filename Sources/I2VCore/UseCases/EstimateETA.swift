import Foundation
import Synchronization

/// Seconds until a queued or running task's video is expected, from what recent jobs of the same size and
/// frame count took per step (and to encode) and the work ahead of it: the steps the running tasks have
/// left, and the tasks ahead in the queue, counted as jobs like this one, spread over the slots of the
/// live worker nodes. nil while there is nothing measured to go by.
package final class EstimateETA: Sendable {
    package let statistics: any JobStatistics
    package let nodes: LiveNodes

    private struct SizeKey: Hashable {
        var width: Int
        var height: Int
        var frames: Int
    }

    /// Profiles change only as jobs finish, and the running work step by step: a status poll reads them
    /// from here rather than from the store every time.
    private let profiles = Mutex<[SizeKey: (profile: JobProfile?, at: ContinuousClock.Instant)]>([:])
    private let queue = Mutex<(running: [RemainingWork], slots: Int, at: ContinuousClock.Instant)?>(nil)

    package init(statistics: any JobStatistics, nodes: LiveNodes) {
        self.statistics = statistics
        self.nodes = nodes
    }

    package func callAsFunction(_ view: TaskView, now: Date = Date()) async -> Double? {
        let task = view.task
        let parameters = task.parameters
        let total = task.progressTotal ?? parameters.inferSteps
        guard let own = await profile(width: parameters.width, height: parameters.height, frames: parameters.numFrames) else {
            // Nothing of this size has finished yet: a running task's own pace so far is the only measure.
            guard task.status == .inProgress, let step = task.progressStep, step > 0, let started = task.startedAt else { return nil }
            return Double(max(0, total - step)) * now.timeIntervalSince(started) / Double(step)
        }
        let job = Double(parameters.inferSteps) * own.secondsPerStep + own.encodeSeconds
        switch task.status {
        case .inProgress:
            return Double(max(0, total - (task.progressStep ?? 0))) * own.secondsPerStep + own.encodeSeconds
        case .inQueue:
            guard let position = view.queuePosition, let (running, slots) = await queueState() else { return nil }
            var ahead = Double(position - 1) * job
            for work in running {
                let perStep = await profile(width: work.width, height: work.height, frames: work.frames)?.secondsPerStep ?? own.secondsPerStep
                ahead += Double(work.steps) * perStep
            }
            return ahead / Double(max(1, slots)) + job
        case .succeed, .failed, .cancelled:
            return nil
        }
    }

    private func profile(width: Int, height: Int, frames: Int) async -> JobProfile? {
        let key = SizeKey(width: width, height: height, frames: frames)
        let now = ContinuousClock.now
        // "Nothing of this size finished yet" is kept too, or every poll of a deep queue waiting for its first
        // job of a size would ask the store again; but only for a second, so the first ETA follows that first
        // job quickly. A store error is not kept.
        if let hit = profiles.withLock({ $0[key] }), now - hit.at < (hit.profile == nil ? .seconds(1) : .seconds(10)) {
            return hit.profile
        }
        let profile: JobProfile?
        do { profile = try await statistics.jobProfile(width: width, height: height, frames: frames) } catch { return nil }
        profiles.withLock { $0[key] = (profile, now) }
        return profile
    }

    private func queueState() async -> (running: [RemainingWork], slots: Int)? {
        let now = ContinuousClock.now
        if let hit = queue.withLock({ $0 }), now - hit.at < .seconds(1) { return (hit.running, hit.slots) }
        guard let running = try? await statistics.runningWork(), let live = try? await nodes.live() else { return nil }
        let slots = live.reduce(0) { $0 + $1.slots }
        queue.withLock { $0 = (running, slots, now) }
        return (running, slots)
    }
}
