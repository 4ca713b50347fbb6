/// Pages through an owner's tasks, newest or oldest first; another key's tasks never appear.
struct ListTasks: Sendable {
    /// The most tasks one page holds.
    static let maxLimit = 100

    let store: any TaskListing

    func callAsFunction(owner: String, after: String?, limit: Int, order: TaskListOrder) async throws -> TaskListingResult {
        try await store.listTasks(ownerKeyHash: owner, after: after, limit: min(max(1, limit), Self.maxLimit), order: order)
    }
}
