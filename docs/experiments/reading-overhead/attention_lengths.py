import torch, time, torch.nn.functional as F
torch.set_num_threads(1)
def bench(fn, n=20):
    fn(); t=time.process_time()
    for _ in range(n): fn()
    return (time.process_time()-t)/n*1e3
for dt in (torch.bfloat16, torch.float32):
    out=[]
    for L in list(range(128, 300, 8)) + [193, 201, 209, 225, 257, 289]:
        q = torch.randn(1, 9, L, 64, dtype=dt); k = torch.randn(1, 3, L, 64, dtype=dt); v = torch.randn(1, 3, L, 64, dtype=dt)
        out.append((L, bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))))
    print(" ".join("%d:%.2f" % o for o in sorted(out)))
