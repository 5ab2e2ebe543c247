// emu_profile: the CUDA emulation as a profiler (see emu_profile.h and kernels/README.md, "The
// emulator as a profiler").
//
// Memory: the instrumented kernel code reports every load and store it makes (address, size, the
// call site: the return address of the hook, one per load or store instruction of the host code)
// while a fiber of a profiled launch runs. An address is global when it lies in a cudaMalloc
// allocation, shared when it lies in the launch's dynamic shared memory or a static __shared__
// array, and anything else (the fibers' stacks, TLS, the emulator's own data) is not counted. The
// accesses are grouped into requests as a warp instruction groups them: per warp, per site, the
// k-th execution of the site by each lane since the warp's last sync point (a barrier or a warp
// collective, where the lanes reconverge) forms request k. At the next sync point the warp's
// requests are complete and counted:
//   global: the distinct 32-byte sectors the request's lanes touch (a misaligned or strided access
//     touches more than bytes / 32);
//   shared: wavefronts: the lanes are taken in phases as the hardware does (4-byte and narrower
//     accesses: the whole warp at once; 8-byte: two half-warps; 16-byte: four quarter-warps), and a
//     phase needs as many passes as the largest number of distinct 4-byte words that its lanes touch
//     in one of the 32 banks (word % 32); the same word read by several lanes is one access.
// WMMA loads and stores run inside the emulator (not instrumented) and are counted as the hardware
// executes them: a bf16 fragment as ldmatrix.x4 (one request, 32 lanes x 16 bytes: the 16 lines of
// 32 bytes along the contiguous dimension, one 8 x 8 matrix per quarter-warp), a float accumulator
// as the mma C layout (row-major: 4 requests of 8 bytes a lane; column-major: 8 of 4 bytes).
// The PTX instructions (kernels/ptx.cuh) run inside the emulator too and are counted as issued:
// mma.sync m16n8k16 as 2 * 16 * 8 * 16 mma_flop; ldmatrix as one shared request of its 8, 16 or 32
// rows, one 8 x 8 matrix (8 rows of 16 bytes) per phase; cp.async as the lane's 16-byte global load
// and shared store, grouped into warp requests like the instrumented accesses.
//
// Floating point: -fsanitize-coverage=trace-pc calls a hook at the start of every basic block of
// the instrumented code; the table that maps a block (the hook's return address) to its floating-
// point instructions comes from objdump -d of the running executable, read once when profiling
// starts: scalar add/sub/mul/div/sqrt/min/max count 1 (fp32 or fp64 by their ss/sd suffix), FMA 2,
// packed forms those times their lanes; calls of fminf/fmaxf count 1, calls of libm transcendentals
// (expf, logf, log1pf, ...) count in math_calls. Comparisons, conversions, negation and fabs (bit
// operations) are not counted.
#include "emu_profile.h"

#include "elf_symbols.h"

#include <cxxabi.h>
#include <elf.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace givt_emu {
namespace prof {

bool g_on;
bool g_instrumented;
__thread int t_fiber = -1;

namespace {

enum Space { OTHER = 0, GLOBAL = 1, SHARED = 2 };

// ---- this launch's memory map ------------------------------------------------------------------
Range g_smem;
std::vector<Range> g_static, g_globals, g_skip;
size_t g_last_global;
bool g_in_launch;

inline bool inside(const Range &r, uintptr_t a) { return a - r.lo < r.size; }

int classify(uintptr_t a) {
    if (inside(g_smem, a)) return SHARED;
    if (g_last_global < g_globals.size() && inside(g_globals[g_last_global], a)) return GLOBAL;
    for (const Range &r : g_static)
        if (inside(r, a)) return SHARED;
    for (const Range &r : g_skip)
        if (inside(r, a)) return OTHER;
    // the last allocation that starts at or below a
    size_t lo = 0, hi = g_globals.size();
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (g_globals[mid].lo <= a) lo = mid + 1;
        else hi = mid;
    }
    if (lo > 0 && inside(g_globals[lo - 1], a)) {
        g_last_global = lo - 1;
        return GLOBAL;
    }
    return OTHER;
}

// ---- counters ------------------------------------------------------------------------------------
ProfileCounters g_cur, g_last;
std::string g_cur_name, g_last_name;
bool g_have_last;
std::map<std::string, ProfileCounters> g_kernels;

// scratch for one request
std::vector<uint64_t> g_scratch;

unsigned long long distinct(std::vector<uint64_t> &v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return (unsigned long long)(std::unique(v.begin(), v.end()) - v.begin());
}

// One warp-wide request: the lanes in mask access size bytes at addr[lane].
void account(const uint64_t *addr, uint32_t mask, unsigned size, int space, bool store) {
    if (!mask || !size) return;
    unsigned n = (unsigned)__builtin_popcount(mask);
    if (space == GLOBAL) {
        std::vector<uint64_t> &v = g_scratch;
        v.clear();
        for (int l = 0; l < 32; l++)
            if (mask >> l & 1)
                for (uint64_t s = addr[l] >> 5; s <= (addr[l] + size - 1) >> 5; s++) v.push_back(s);
        unsigned long long sectors = distinct(v);
        if (store) g_cur.gst_requests++, g_cur.gst_bytes += (unsigned long long)n * size, g_cur.gst_sectors += sectors;
        else g_cur.gld_requests++, g_cur.gld_bytes += (unsigned long long)n * size, g_cur.gld_sectors += sectors;
        return;
    }
    if (size > 16) {  // no GPU access is wider than 16 bytes: as the compiler would split it
        uint64_t a[32];
        for (unsigned off = 0; off < size; off += 16) {
            for (int l = 0; l < 32; l++) a[l] = addr[l] + off;
            account(a, mask, size - off < 16 ? size - off : 16, space, store);
        }
        return;
    }
    int per_phase = size <= 4 ? 32 : size <= 8 ? 16 : 8;
    unsigned long long wavefronts = 0, ideal = 0;
    for (int p = 0; p < 32; p += per_phase) {
        std::vector<uint64_t> &v = g_scratch;
        v.clear();
        for (int l = p; l < p + per_phase; l++)
            if (mask >> l & 1)
                for (uint64_t w = addr[l] >> 2; w <= (addr[l] + size - 1) >> 2; w++) v.push_back(w);
        unsigned long long words = distinct(v);
        if (!words) continue;
        unsigned per_bank[32] = {0};
        unsigned most = 0;
        for (unsigned long long i = 0; i < words; i++) most = std::max(most, ++per_bank[v[i] & 31]);
        wavefronts += most;
        ideal += (words + 31) / 32;
    }
    g_cur.shared_requests++;
    g_cur.shared_bytes += (unsigned long long)n * size;
    g_cur.shared_wavefronts += wavefronts;
    g_cur.shared_bank_conflicts += wavefronts - ideal;
}

// ---- requests being formed: per warp, per site ---------------------------------------------------
struct Req {
    uint32_t mask;
    uint64_t addr[32];
};
struct Site {
    uintptr_t pc;
    unsigned size;
    int space;
    bool store;
    uint32_t slot;  // its place in the warp's table
    uint32_t nreq;
    uint32_t count[32];  // executions by each lane since the warp's last sync point
    std::vector<Req> reqs;
};
struct Warp {
    std::vector<Site> sites;
    uint32_t nsites = 0;
    std::vector<int32_t> table;  // open addressing: index into sites, -1 empty
    int bits = 0;

    static uint64_t hash(uintptr_t pc, unsigned size, int space, bool store) {
        uint64_t k = (uint64_t)pc ^ ((uint64_t)size << 47) ^ ((uint64_t)space << 61) ^ ((uint64_t)store << 63);
        return k * 0x9E3779B97F4A7C15ull;
    }
    void rebuild(int b) {
        bits = b;
        table.assign((size_t)1 << b, -1);
        size_t mask = table.size() - 1;
        for (uint32_t i = 0; i < nsites; i++) {
            Site &s = sites[i];
            size_t h = hash(s.pc, s.size, s.space, s.store) >> (64 - bits);
            while (table[h] >= 0) h = (h + 1) & mask;
            table[h] = (int32_t)i, s.slot = (uint32_t)h;
        }
    }
    Site &find(uintptr_t pc, unsigned size, int space, bool store) {
        if (!bits) rebuild(6);
        size_t mask = table.size() - 1;
        size_t h = hash(pc, size, space, store) >> (64 - bits);
        for (;;) {
            int32_t i = table[h];
            if (i < 0) break;
            Site &s = sites[i];
            if (s.pc == pc && s.size == size && s.space == space && s.store == store) return s;
            h = (h + 1) & mask;
        }
        if ((nsites + 1) * 2 > table.size()) {
            rebuild(bits + 1);  // the sites so far; the new one goes in below
            mask = table.size() - 1;
            h = hash(pc, size, space, store) >> (64 - bits);
            while (table[h] >= 0) h = (h + 1) & mask;
        }
        if (nsites == sites.size()) sites.emplace_back();
        Site &s = sites[nsites];
        s.pc = pc, s.size = size, s.space = space, s.store = store, s.slot = (uint32_t)h, s.nreq = 0;
        memset(s.count, 0, sizeof s.count);
        table[h] = (int32_t)nsites++;
        return s;
    }
    void flush() {
        for (uint32_t i = 0; i < nsites; i++) {
            Site &s = sites[i];
            for (uint32_t k = 0; k < s.nreq; k++) account(s.reqs[k].addr, s.reqs[k].mask, s.size, s.space, s.store);
            table[s.slot] = -1;
        }
        nsites = 0;
    }
};
std::vector<Warp> g_warps;
int g_nwarps;

// ---- the floating-point table: basic block -> its FP instructions (objdump of this executable) ----
struct Flops {
    uint32_t f32, f64, math;
};
std::unordered_map<uintptr_t, Flops> g_flops;  // runtime address after the block's hook call -> counts
bool g_flops_built, g_flops_ok;

uintptr_t exe_base() {
    uintptr_t base = 0;
    dl_iterate_phdr(
        [](struct dl_phdr_info *info, size_t, void *out) {
            *(uintptr_t *)out = (uintptr_t)info->dlpi_addr;  // the first module is the executable
            return 1;
        },
        &base);
    return base;
}

std::string exe_path() {
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return "";
    buf[n] = 0;
    return buf;
}

bool is_suffix(const char *s, const char **which) {
    static const char *const sfx[] = {"ss", "sd", "ps", "pd"};
    for (const char *x : sfx)
        if (!strcmp(s, x)) {
            *which = x;
            return true;
        }
    return false;
}

// The floating-point work of one instruction (AT&T mnemonic and operands).
void classify_insn(const char *mn, const char *ops, Flops *f) {
    const char *m = mn[0] == 'v' ? mn + 1 : mn, *sfx = NULL;
    int per = 0;
    static const char *const basic[] = {"add", "sub", "mul", "div", "min", "max", "sqrt"};
    for (const char *b : basic) {
        size_t n = strlen(b);
        if (!strncmp(m, b, n) && is_suffix(m + n, &sfx)) {
            per = 1;
            break;
        }
    }
    if (!per && mn[0] == 'v' && (!strncmp(m, "fmadd", 5) || !strncmp(m, "fmsub", 5) || !strncmp(m, "fnmadd", 6) ||
                                 !strncmp(m, "fnmsub", 6))) {
        const char *p = m + (m[1] == 'n' ? 6 : 5);
        if (!strncmp(p, "sub", 3) || !strncmp(p, "add", 3)) p += 3;  // fmaddsub, fmsubadd
        while (*p >= '0' && *p <= '9') p++;
        if (is_suffix(p, &sfx)) per = 2;
    }
    if (!per) return;
    int width = strstr(ops, "%zmm") ? 512 : strstr(ops, "%ymm") ? 256 : 128;
    bool dbl = sfx[1] == 'd';
    int lanes = sfx[0] == 's' ? 1 : width / (dbl ? 64 : 32);
    (dbl ? f->f64 : f->f32) += (uint32_t)(per * lanes);
}

void classify_call(const char *ops, Flops *f) {
    const char *lt = strchr(ops, '<');
    if (!lt) return;
    std::string name(lt + 1);
    size_t e = name.find_first_of("@>+");
    if (e != std::string::npos) name.resize(e);
    static const char *const minmax32[] = {"fminf", "fmaxf"}, *const minmax64[] = {"fmin", "fmax"};
    static const char *const transc[] = {"expf",  "exp2f", "expm1f", "logf", "log2f", "log10f", "log1pf", "powf",
                                         "tanhf", "sinf",  "cosf",   "erff", "exp",   "exp2",   "expm1",  "log",
                                         "log2",  "log10", "log1p",  "pow",  "tanh",  "sin",    "cos",    "erf"};
    for (const char *x : minmax32)
        if (name == x) f->f32++;
    for (const char *x : minmax64)
        if (name == x) f->f64++;
    for (const char *x : transc)
        if (name == x) f->math++;
}

void build_flops() {
    if (g_flops_built) return;
    g_flops_built = true;
    std::string exe = exe_path();
    if (exe.empty() || exe.find('\'') != std::string::npos) return;
    std::string cmd = "objdump -d --no-show-raw-insn -w '" + exe + "' 2>/dev/null";
    FILE *p = popen(cmd.c_str(), "r");
    if (!p) return;
    uintptr_t base = exe_base();
    char line[4096];
    bool pending = false, any = false;
    Flops cur = {0, 0, 0};
    uintptr_t cur_pc = 0;
    bool in_block = false;
    auto finish = [&]() {
        if (in_block && (cur.f32 || cur.f64 || cur.math)) g_flops[cur_pc] = cur;
        in_block = false;
        cur = {0, 0, 0};
    };
    while (fgets(line, sizeof line, p)) {
        // "  1234:\tmnemonic operands" (instructions) or "0000000000001234 <symbol>:" (a function)
        char *s = line;
        while (*s == ' ') s++;
        char *colon = strchr(s, ':');
        if (!colon || colon[1] != '\t') {
            if (strchr(line, '<')) finish(), pending = false;  // a new function
            continue;
        }
        char *end;
        unsigned long long addr = strtoull(s, &end, 16);
        if (end != colon) continue;
        char *ins = colon + 2;
        // the mnemonic, after prefixes
        char mn[64];
        const char *ops = ins;
        for (;;) {
            int n = 0;
            while (*ops == ' ') ops++;
            while (*ops && *ops != ' ' && *ops != '\t' && *ops != '\n' && n < 63) mn[n++] = *ops++;
            mn[n] = 0;
            if (!strcmp(mn, "lock") || !strcmp(mn, "rep") || !strcmp(mn, "repz") || !strcmp(mn, "repnz") ||
                !strcmp(mn, "notrack") || !strcmp(mn, "bnd") || !strcmp(mn, "data16") || !strcmp(mn, "cs") ||
                !strcmp(mn, "ds"))
                continue;
            break;
        }
        if (pending) {
            finish();
            in_block = true, cur_pc = base + (uintptr_t)addr, pending = false;
        }
        if (!strncmp(mn, "call", 4)) {
            if (strstr(ops, "<__sanitizer_cov_trace_pc>")) {
                finish();
                pending = true;
                any = true;
                continue;
            }
            if (in_block) classify_call(ops, &cur);
            continue;
        }
        if (!in_block) continue;
        if (!strncmp(mn, "ret", 3) || !strcmp(mn, "jmp") || !strcmp(mn, "ud2")) {
            finish();
            continue;
        }
        classify_insn(mn, ops, &cur);
    }
    finish();
    int rc = pclose(p);
    g_flops_ok = any && rc == 0;
    if (!g_flops_ok) {
        g_flops.clear();
        fprintf(stderr, "cuda_emu: profile: no floating-point counts (objdump -d of %s failed or found no "
                        "instrumented code): float_flop, fp64_flop and math_calls read NA\n", exe.c_str());
    }
}

// ---- kernel names: the executable's symbol table -------------------------------------------------
std::map<uintptr_t, std::string> g_funcs;  // link-time address -> mangled name
bool g_funcs_read;
std::map<const void *, std::string> g_names;

void read_funcs() {
    if (g_funcs_read) return;
    g_funcs_read = true;
    elf_for_each_symbol([](const Elf64_Sym &sym, const char *name) {
        if (ELF64_ST_TYPE(sym.st_info) == STT_FUNC && sym.st_value) g_funcs.emplace((uintptr_t)sym.st_value, name);
    });
}

// sass_check.py's shorten(): "void (anonymous namespace)::f<float, unsigned int>(float*, ...)" ->
// "f<float, unsigned>"
std::string shorten(const std::string &d) {
    static const std::string anon = "(anonymous namespace)";
    size_t end = d.size();
    int depth = 0;
    for (size_t i = 0; i < d.size(); i++) {
        if (d.compare(i, anon.size(), anon) == 0) {
            i += anon.size() - 1;
            continue;
        }
        char c = d[i];
        if (c == '<') depth++;
        else if (c == '>') depth--;
        else if (c == '(' && depth == 0) {
            end = i;
            break;
        }
    }
    std::string s = d.substr(0, end);
    size_t start = 0;
    depth = 0;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] == '<') depth++;
        else if (s[i] == '>') depth--;
        else if (s[i] == ' ' && depth == 0) start = i + 1;
    }
    s = s.substr(start);
    size_t cut = 0;
    depth = 0;
    for (size_t i = 0; i + 1 < s.size(); i++) {
        if (s[i] == '<') depth++;
        else if (s[i] == '>') depth--;
        else if (depth == 0 && s[i] == ':' && s[i + 1] == ':') cut = i + 2;
    }
    s = s.substr(cut);
    auto replace_all = [&](const std::string &from, const std::string &to) {
        for (size_t i = 0; (i = s.find(from, i)) != std::string::npos; i += to.size()) s.replace(i, from.size(), to);
    };
    replace_all(anon + "::", "");
    replace_all("unsigned int", "unsigned");
    replace_all("unsigned long", "size_t");
    return s;
}

const std::string &kernel_name(const void *fn, const char *fallback) {
    auto it = g_names.find(fn);
    if (it != g_names.end()) return it->second;
    read_funcs();
    std::string name = fallback ? fallback : "?";
    auto f = g_funcs.find((uintptr_t)fn - exe_base());
    if (f != g_funcs.end()) {
        int st = 0;
        char *dem = abi::__cxa_demangle(f->second.c_str(), NULL, NULL, &st);
        name = shorten(st == 0 && dem ? std::string(dem) : f->second);
        free(dem);
    }
    return g_names.emplace(fn, name).first->second;
}

void add(ProfileCounters &to, const ProfileCounters &c) {
    to.launches += c.launches, to.blocks += c.blocks, to.threads += c.threads;
    to.mma_flop += c.mma_flop, to.float_flop += c.float_flop, to.fp64_flop += c.fp64_flop;
    to.math_calls += c.math_calls;
    to.gld_requests += c.gld_requests, to.gld_bytes += c.gld_bytes, to.gld_sectors += c.gld_sectors;
    to.gst_requests += c.gst_requests, to.gst_bytes += c.gst_bytes, to.gst_sectors += c.gst_sectors;
    to.shared_requests += c.shared_requests, to.shared_bytes += c.shared_bytes;
    to.shared_wavefronts += c.shared_wavefronts, to.shared_bank_conflicts += c.shared_bank_conflicts;
    to.barriers += c.barriers, to.warp_collectives += c.warp_collectives;
    to.flop_counted = c.flop_counted;
}

std::string g_env_path;
void write_at_exit() {
    if (!g_env_path.empty() && !profile_write(g_env_path.c_str()))
        fprintf(stderr, "cuda_emu: GIVT_EMU_PROFILE=%s: cannot write the profile\n", g_env_path.c_str());
}

}  // namespace

void init_from_env(void) {
    static bool done;
    if (done) return;
    done = true;
    const char *p = getenv("GIVT_EMU_PROFILE");
    if (!p || !*p) return;
    if (!g_instrumented) {
        fprintf(stderr, "cuda_emu: GIVT_EMU_PROFILE=%s ignored: this program's kernels are not instrumented "
                        "(make emu-profile builds programs whose kernels are, in $BUILD/emu-prof/)\n", p);
        return;
    }
    g_env_path = p;
    g_on = true;
    atexit(write_at_exit);
}

void launch_begin(const LaunchInfo &info) {
    if (g_instrumented) build_flops();
    g_cur = ProfileCounters();
    g_cur.launches = 1;
    g_cur.blocks = info.nblocks;
    g_cur.threads = info.nblocks * (unsigned long long)info.nthreads;
    g_cur.flop_counted = g_flops_ok;
    g_cur_name = kernel_name(info.fn, info.name);
    g_smem = info.smem;
    g_static.assign(info.static_shared, info.static_shared + info.nstatic);
    g_globals.assign(info.globals, info.globals + info.nglobals);
    g_skip.assign(info.skip, info.skip + info.nskip);
    g_last_global = 0;
    g_nwarps = (info.nthreads + 31) / 32;
    if ((int)g_warps.size() < g_nwarps) g_warps.resize((size_t)g_nwarps);
    for (int w = 0; w < g_nwarps; w++) g_warps[(size_t)w].flush();  // (empty)
    g_in_launch = true;
}

void launch_end(bool abandoned) {
    g_in_launch = false;
    t_fiber = -1;
    for (int w = 0; w < g_nwarps; w++) g_warps[(size_t)w].flush();
    if (abandoned) return;
    g_last = g_cur, g_last_name = g_cur_name, g_have_last = true;
    add(g_kernels[g_cur_name], g_cur);
}

void block_end(void) {
    for (int w = 0; w < g_nwarps; w++) g_warps[(size_t)w].flush();
}

void barrier(void) {
    g_cur.barriers++;
    for (int w = 0; w < g_nwarps; w++) g_warps[(size_t)w].flush();
}

void warp_sync(int warp, bool exchange) {
    if (exchange) g_cur.warp_collectives++;
    if (warp >= 0 && warp < g_nwarps) g_warps[(size_t)warp].flush();
}

void access(uintptr_t pc, uintptr_t addr, unsigned size, bool store) {
    int f = t_fiber;
    if (f < 0 || !size) return;
    int space = classify(addr);
    if (space == OTHER) return;
    Site &s = g_warps[(size_t)(f >> 5)].find(pc, size, space, store);
    unsigned lane = (unsigned)f & 31;
    uint32_t k = s.count[lane]++;
    if (k == s.nreq) {
        if (k == s.reqs.size()) s.reqs.emplace_back();
        s.reqs[k].mask = 0;
        s.nreq++;
    }
    Req &r = s.reqs[k];
    r.mask |= 1u << lane;
    r.addr[lane] = addr;
}

void basic_block(uintptr_t pc) {
    if (t_fiber < 0) return;
    auto it = g_flops.find(pc);
    if (it == g_flops.end()) return;
    g_cur.float_flop += it->second.f32;
    g_cur.fp64_flop += it->second.f64;
    g_cur.math_calls += it->second.math;
}

void wmma_mem(const void *p, unsigned ldm, int col_major, int elem_bytes, int store) {
    if (!g_in_launch) return;
    uintptr_t base = (uintptr_t)p;
    int space = classify(base);
    if (space == OTHER) return;
    uint64_t a[32];
    if (elem_bytes == 2) {  // ldmatrix.x4: lanes 8j..8j+7 give the 8 lines of matrix j
        for (int l = 0; l < 32; l++) {
            int line = (l & 7) + 8 * ((l >> 3) & 1), half = l >> 4;
            a[l] = base + ((uint64_t)line * ldm + 8u * half) * 2;
        }
        account(a, 0xffffffffu, 16, space, store);
        return;
    }
    // the accumulator in the mma C layout: lane l holds rows l/4 and l/4 + 8, columns 2 (l % 4) + {0, 1}
    // of each 8-column half
    for (int t = 0; t < 2; t++)
        for (int h = 0; h < 2; h++) {
            if (!col_major) {
                for (int l = 0; l < 32; l++)
                    a[l] = base + ((uint64_t)(l / 4 + 8 * h) * ldm + 8 * t + 2 * (l % 4)) * 4;
                account(a, 0xffffffffu, 8, space, store);
            } else {
                for (int e = 0; e < 2; e++) {
                    for (int l = 0; l < 32; l++)
                        a[l] = base + ((uint64_t)(8 * t + 2 * (l % 4) + e) * ldm + l / 4 + 8 * h) * 4;
                    account(a, 0xffffffffu, 4, space, store);
                }
            }
        }
}

void wmma_mma(void) {
    if (g_in_launch) g_cur.mma_flop += 2ull * 16 * 16 * 16;
}

void ptx_mma(void) {
    if (g_in_launch) g_cur.mma_flop += 2ull * 16 * 8 * 16;
}

// ldmatrix .x1/.x2/.x4: one shared request of 8 num rows of 16 bytes. The hardware reads one 8 x 8
// matrix (the 8 row addresses of lanes 8i..8i+7) per phase: account()'s 16-byte quarter-warp phases
// are exactly these, so a matrix whose 8 rows cover the 32 banks once takes 1 wavefront, and rows whose
// 16 bytes fall on the same banks at different words take one more each (rows 64 bytes apart: 4).
void ptx_ldmatrix(const void *const rows[32], int num) {
    if (!g_in_launch || num < 1 || num > 4) return;
    uint64_t a[32] = {0};
    uint32_t mask = num == 4 ? 0xffffffffu : (1u << (8 * num)) - 1;
    for (int l = 0; l < 8 * num; l++) a[l] = (uint64_t)(uintptr_t)rows[l];
    account(a, mask, 16, SHARED, false);
}

// cp.async 16 bytes, counted at issue (not when the copy lands): a global load of src and a shared
// store to dst by this lane, grouped into warp requests like the instrumented accesses (per warp, per
// call site, the k-th issue of each lane since the warp's last sync point); the site key is the call
// site's file and line with the top bit set, which no code address has.
void ptx_cp_async(const void *dst, const void *src, const char *file, int line) {
    if (t_fiber < 0 || !g_in_launch) return;
    uintptr_t site = ((uintptr_t)1 << 63) | (((uintptr_t)file << 16) ^ (uintptr_t)(unsigned)line);
    access(site, (uintptr_t)src, 16, false);
    access(site, (uintptr_t)dst, 16, true);
}

}  // namespace prof

// ---- the public functions --------------------------------------------------------------------------
bool profile_instrumented(void) { return prof::g_instrumented; }
void profile_enable(bool on) { prof::g_on = on; }
bool profile_enabled(void) { return prof::g_on; }
void profile_reset(void) {
    prof::g_kernels.clear();
    prof::g_have_last = false;
}
const ProfileCounters *profile_last_launch(void) { return prof::g_have_last ? &prof::g_last : NULL; }
const char *profile_last_kernel(void) { return prof::g_have_last ? prof::g_last_name.c_str() : ""; }
bool profile_kernel(const char *name, ProfileCounters *out) {
    auto it = prof::g_kernels.find(name);
    if (it == prof::g_kernels.end()) return false;
    *out = it->second;
    return true;
}

bool profile_write(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return false;
    fprintf(f, "kernel\tlaunches\tblocks\tthreads\tmma_flop\tfloat_flop\tfp64_flop\tmath_calls\tgld_requests\t"
               "gld_bytes\tgld_sectors\tgst_requests\tgst_bytes\tgst_sectors\tshared_requests\tshared_bytes\t"
               "shared_wavefronts\tshared_bank_conflicts\tbarriers\twarp_collectives\n");
    for (const auto &k : prof::g_kernels) {
        const ProfileCounters &c = k.second;
        char fl[3][32];
        if (c.flop_counted) {
            snprintf(fl[0], sizeof fl[0], "%llu", c.float_flop);
            snprintf(fl[1], sizeof fl[1], "%llu", c.fp64_flop);
            snprintf(fl[2], sizeof fl[2], "%llu", c.math_calls);
        } else {
            for (auto &x : fl) snprintf(x, sizeof x, "NA");
        }
        fprintf(f, "%s\t%llu\t%llu\t%llu\t%llu\t%s\t%s\t%s\t%llu\t%llu\t%llu\t%llu\t%llu\t%llu\t%llu\t%llu\t%llu\t%llu\t"
                   "%llu\t%llu\n",
                k.first.c_str(), c.launches, c.blocks, c.threads, c.mma_flop, fl[0], fl[1], fl[2], c.gld_requests,
                c.gld_bytes, c.gld_sectors, c.gst_requests, c.gst_bytes, c.gst_sectors, c.shared_requests,
                c.shared_bytes, c.shared_wavefronts, c.shared_bank_conflicts, c.barriers, c.warp_collectives);
    }
    return fclose(f) == 0;
}

}  // namespace givt_emu
